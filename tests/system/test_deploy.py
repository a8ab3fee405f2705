"""The files in deploy/, as far as this machine can run them.

* The systemd unit passes ``systemd-analyze verify`` with no complaint (the
  tool prints warnings for unknown keys and bad values and still exits 0, so
  its output must be empty), and the server speaks the notify protocol its
  ``Type=notify`` relies on, to a real datagram socket.
* The Dockerfile and compose.yaml cannot be built here (their base images
  come from a registry this machine does not reach); what they run is run
  here instead: the image's entry point with the example configuration, its
  health check against that server, and the compose nodes' environment
  through the server's own option checks.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from reactor.options import parse_args
from tests.faults import REPO, ServerProcess, port_in_log_line, server_process
from tests.support import DEFAULT_TIMEOUT, Clients, the_original_conversation

DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "reactor-chat.service"
CONFIG_IN_IMAGE = "/etc/reactor-chat/reactor-chat.toml"


# -- the systemd unit ---------------------------------------------------------------


def _unit_lines(key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
            if line.startswith(f"{key}=")]


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify checks that the programs exist: point the unit at this
    # environment's reactor-chat-server (the script pip installs) or a
    # stand-in with the same name.
    program = shutil.which("reactor-chat-server")
    if program is None:
        program = str(tmp_path / "reactor-chat-server")
        Path(program).write_text("#!/bin/sh\n")
        os.chmod(program, 0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/reactor-chat-server", program))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_the_unit_checks_the_configuration_before_starting_and_reloads_with_sighup() -> None:
    (start,) = _unit_lines("ExecStart")
    (pre,) = _unit_lines("ExecStartPre")
    program, *options = shlex.split(start)
    assert shlex.split(pre) == [program, "check-config", *options]
    assert _unit_lines("Type") == ["notify"]
    assert _unit_lines("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    for sandboxing in ("ProtectSystem=strict", "PrivateTmp=yes", "NoNewPrivileges=true",
                       "StateDirectory=reactor-chat", "ProtectHome=yes"):
        assert sandboxing in UNIT.read_text().splitlines(), sandboxing


def test_under_the_unit_the_log_leaves_the_time_to_journald() -> None:
    environment = dict(line.split("=", 1) for line in _unit_lines("Environment"))
    assert parse_args([], environment).log_time == "off"
    assert parse_args([], {}).log_time == "utc"


# -- the notify protocol --------------------------------------------------------------


class NotifySocket:
    """A service manager's end of $NOTIFY_SOCKET: a unix datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    def receive(self, timeout: float = DEFAULT_TIMEOUT) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    if request.param == "path":
        address = variable = str(tmp_path / "notify")
    else:
        name = f"reactor-chat-test-{os.getpid()}-{id(tmp_path)}"
        address, variable = "\0" + name, "@" + name
    notify = NotifySocket(address)
    monkeypatch.setenv("NOTIFY_SOCKET", variable)  # the server inherits it
    try:
        yield notify
    finally:
        notify.close()


def test_the_server_tells_systemd_it_is_ready_reloading_and_stopping(
        backend: str, notify_socket: NotifySocket) -> None:
    with server_process(backend) as server:
        assert notify_socket.receive() == {"READY": "1"}
        # Ready means serving: the listening line is out and a conversation works.
        server.wait_for_log(lambda line: line == f"[Server] Listening on port {server.port}...")
        with Clients(server.port) as clients:
            the_original_conversation(clients)

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        server.process.send_signal(signal.SIGHUP)
        reloading = notify_socket.receive()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reloading["RELOADING"] == "1"
        # The machine's monotonic clock, read when the reload began.
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        assert notify_socket.receive() == {"READY": "1"}

        server.process.send_signal(signal.SIGTERM)
        assert notify_socket.receive() == {"STOPPING": "1"}
        assert server.process.wait(DEFAULT_TIMEOUT) == 0


def test_without_notify_socket_the_server_sends_nothing_and_serves(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    with server_process("select") as server:
        with Clients(server.port) as clients:
            the_original_conversation(clients)
        assert server.terminate() == 0


# -- the container recipe ---------------------------------------------------------------


def _dockerfile_json(instruction: str) -> list[str]:
    """The exec-form (JSON) arguments of the Dockerfile's ``instruction``."""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        match = re.match(rf"^{instruction}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])\s*$", line)
        if match:
            return list(json.loads(match.group(1)))
    raise AssertionError(f"the Dockerfile has no {instruction} in exec form")


def _started(argv: list[str], env: dict[str, str]) -> ServerProcess:
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    server = ServerProcess(process)
    server.wait_listening()
    return server


def test_the_image_entry_point_serves_and_its_health_check_passes() -> None:
    entry = _dockerfile_json("ENTRYPOINT")
    assert entry[0] == "reactor-chat-server"
    assert "COPY deploy/reactor-chat.toml " + CONFIG_IN_IMAGE in (DEPLOY / "Dockerfile").read_text()
    # The image's command, run here: its configuration file is the example's,
    # on a free port of this machine's loopback.
    argv = [sys.executable, "-m", "reactor",
            *[str(DEPLOY / "reactor-chat.toml") if arg == CONFIG_IN_IMAGE else arg
              for arg in entry[1:]]]
    # The image sets the admin port; here a free one, read from its log line.
    assert "ENV REACTOR_ADMIN_PORT=" in (DEPLOY / "Dockerfile").read_text()
    env = {**os.environ, "REACTOR_SERVER_HOST": "127.0.0.1", "REACTOR_SERVER_PORT": "0",
           "REACTOR_ADMIN_PORT": "0", "REACTOR_LOG_LEVEL": "WARNING"}
    server = _started(argv, env)
    try:
        chat = port_in_log_line(server.wait_for_log(lambda line: "Listening on port " in line))
        admin = port_in_log_line(server.wait_for_log(lambda line: "Admin endpoint on port " in line))
        with Clients(chat) as clients:
            the_original_conversation(clients)
        check = _dockerfile_json("HEALTHCHECK")
        assert check[0] == "python" and "/healthz" in check[-1]
        with_admin = {**env, "REACTOR_ADMIN_PORT": str(admin)}
        health = subprocess.run([sys.executable, *check[1:]], timeout=30, env=with_admin)
        assert health.returncode == 0
        # A wedged loop does not answer /healthz: the check fails in its time.
        os.kill(server.pid, signal.SIGSTOP)
        try:
            health = subprocess.run([sys.executable, *check[1:]], timeout=30,
                                    capture_output=True, env=with_admin)
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert health.returncode != 0
        assert server.terminate() == 0
        # ...and fails once the server is gone.
        health = subprocess.run([sys.executable, *check[1:]], timeout=30, capture_output=True,
                                env=with_admin)
        assert health.returncode != 0
    finally:
        server.cleanup()


def test_the_compose_file_runs_redis_and_two_nodes_configured_as_the_server_accepts() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: compose.yaml unparsed")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"redis", "node1", "node2"}
    ports = set()
    for name in ("node1", "node2"):
        node = services[name]
        assert node["build"]["dockerfile"] == "deploy/Dockerfile"
        assert node["depends_on"]["redis"]["condition"] == "service_healthy"
        # The image's own health check, word for word.
        assert node["healthcheck"]["test"] == ["CMD", *_dockerfile_json("HEALTHCHECK")]
        environment = {key: str(value) for key, value in node["environment"].items()}
        args = parse_args([], environment)  # refused (SystemExit) if a variable were wrong
        assert args.cluster == "redis://redis:6379/0"
        assert args.accounts == args.cluster  # "": the cluster's Redis
        ports.update(node["ports"])
    assert len(ports) == 2
