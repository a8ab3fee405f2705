"""The single-node server needs nothing but the standard library: it starts
and serves a conversation with no site-packages at all (``python -S``: no
redis-py, no hiredis, nothing of the extras), and asked for a cluster without
the ``[cluster]`` extra it says so in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from reactor import BACKENDS
from tests.faults import REPO, server_process
from tests.support import LineClient


def test_importing_every_server_module_loads_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "import reactor.__main__, reactor.backends.selector, reactor.backends.threads\n"
        "import reactor.backends.aio, reactor.accounts.store, reactor.accounts.__main__\n"
        "ours = {'reactor', 'protocol', '__main__'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}\n"
        "             - set(sys.stdlib_module_names) - ours))\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_without_site_packages_serves_the_conversation(backend: str) -> None:
    with server_process(backend, standard_library_only=True) as server, \
            LineClient(server.port) as ann, LineClient(server.port) as bob:
        ann.send("Ann")
        ann.expect("<User Ann is online.>")
        bob.send("Bob")
        bob.expect("<User Bob is online.>")
        ann.expect("<User Bob is online.>")
        ann.send('chat Bob "hello"')
        ann.expect("<To Bob> hello")
        bob.expect('<Message from Ann: "hello">')


def test_a_cluster_asked_of_a_server_without_the_extra_is_one_line_and_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-S", "-m", "reactor", "--port", "0", "--cluster",
         "redis://127.0.0.1:6379"],
        cwd=REPO, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "needs the redis package: pip install 'reactor-chat[cluster]'" in lines[0]
