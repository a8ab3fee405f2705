"""The configuration file and the environment, as an operator uses them.

Every option of the command line is settable in the ``--config`` TOML file
and in a ``REACTOR_<SECTION>_<KEY>`` variable, with the same effect on the
server's configuration; the command line wins over the environment, which
wins over the file; a mistake in either is one line naming the file, line
and key (or the variable); ``check-config`` says whether the server would
start, and shows what it would start with.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reactor.options import build_parser, config_from_args, parse_args
from reactor.settings import Option, line_of, options_of
from tests.faults import REPO, server_process
from tests.support import Clients, the_original_conversation

PROGRAM = "reactor-chat-server"
OPTIONS = {option.flag: option for option in options_of(build_parser())}
EXAMPLE = REPO / "deploy" / "reactor-chat.toml"

# Process-wide choices that ServerConfig does not hold (the backend, its
# loop, the supervisor, the log): checked on the parsed options instead.
NOT_IN_SERVER_CONFIG = {"--backend", "--loop", "--workers", "--log-level", "--log-time",
                        "--log-format"}

# For each option: a value other than its default (as TOML would hold it),
# with the other options it needs to be accepted at all.
SAMPLES: dict[str, dict[str, Any]] = {
    "--backend": {"--backend": "threads"},
    "--host": {"--host": "::1"},
    "--port": {"--port": 4321},
    "--max-clients": {"--max-clients": 77},
    "--max-clients-per-ip": {"--max-clients-per-ip": 5},
    "--login-timeout": {"--login-timeout": 2.5},
    "--keepalive-idle": {"--keepalive-idle": 0},
    "--workers": {"--workers": 3, "--cluster": "redis://127.0.0.1:1/0"},
    "--loop": {"--backend": "asyncio", "--loop": "uvloop"},
    "--max-line": {"--max-line": 8192},
    "--output-limit": {"--output-limit": 8 * 1024 * 1024},
    "--output-hard-limit": {"--output-hard-limit": 32 * 1024 * 1024},
    "--slow-consumer-grace": {"--slow-consumer-grace": 1},
    "--output-budget": {"--output-budget": 1024 * 1024},
    "--delivery-timeout": {"--delivery-timeout": 0.5},
    "--flood-control": {"--flood-control": False},
    "--line-rate": {"--line-rate": 7.5},
    "--line-burst": {"--line-burst": 9},
    "--delivery-rate": {"--delivery-rate": 100},
    "--delivery-burst": {"--delivery-burst": 200},
    "--login-rate": {"--login-rate": 0.5},
    "--login-burst": {"--login-burst": 3},
    "--tls-cert": {"--tls-cert": "/etc/chat/cert.pem", "--tls-key": "/etc/chat/key.pem"},
    "--tls-key": {"--tls-cert": "/etc/chat/cert.pem", "--tls-key": "/etc/chat/key.pem"},
    "--tls-key-password-file": {"--tls-cert": "c.pem", "--tls-key": "k.pem",
                                "--tls-key-password-file": "/run/secrets/key-password"},
    "--tls-port": {"--tls-cert": "c.pem", "--tls-key": "k.pem", "--tls-port": 6697},
    "--accounts": {"--accounts": "/var/lib/reactor-chat/accounts.db"},
    "--allow-plaintext-passwords": {"--accounts": "a.db", "--allow-plaintext-passwords": True},
    "--password-hash": {"--accounts": "a.db", "--password-hash": "scrypt:ln=15,r=8,p=1"},
    "--password-tries": {"--accounts": "a.db", "--password-tries": 5},
    "--password-backoff": {"--accounts": "a.db", "--password-backoff": 2},
    "--password-backoff-max": {"--accounts": "a.db", "--password-backoff-max": 60.0},
    "--history": {"--history": True},
    "--history-direct": {"--history": True, "--history-direct": 50},
    "--history-broadcasts": {"--history": True, "--history-broadcasts": 500},
    "--history-age": {"--history": True, "--history-age": 86400.0},
    "--history-waiting": {"--history": True, "--history-waiting": 10},
    "--cluster": {"--cluster": "redis://:secret@127.0.0.1:6379/2"},
    "--cluster-lease": {"--cluster": "redis://127.0.0.1:1", "--cluster-lease": 1.5},
    "--web-port": {"--web-port": 8080},
    "--web-host": {"--web-port": 8080, "--web-host": "127.0.0.1"},
    "--web-origin": {"--web-port": 8080,
                     "--web-origin": "https://chat.example.org,http://localhost:8080"},
    "--admin-port": {"--admin-port": 9234},
    "--admin-host": {"--admin-port": 9234, "--admin-host": "0.0.0.0"},
    "--log-level": {"--log-level": "debug"},
    "--log-text": {"--log-text": True},
    "--log-time": {"--log-time": "local"},
    "--log-format": {"--log-format": "json"},
}


def _text(value: Any) -> str:
    """A sample as the command line or the environment spells it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _argv(sample: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for flag, value in sample.items():
        if OPTIONS[flag].is_flag:
            argv += [flag] if value else []
        else:
            argv.append(f"{flag}={_text(value)}")
    return argv


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, int | float) else f'"{value}"'


def _toml(sample: dict[str, Any]) -> str:
    tables: dict[str, list[str]] = {}
    for flag, value in sample.items():
        option = OPTIONS[flag]
        tables.setdefault(option.section, []).append(f"{option.key} = {_toml_value(value)}")
    return "".join(f"[{table}]\n" + "\n".join(lines) + "\n\n" for table, lines in tables.items())


def _environment(sample: dict[str, Any]) -> dict[str, str]:
    return {OPTIONS[flag].variable: _text(value) for flag, value in sample.items()}


def _parsed(args: argparse.Namespace) -> dict[str, Any]:
    values = vars(args).copy()
    values.pop("config")
    return values


@pytest.fixture
def config_file(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / "reactor-chat.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str],
            environ: dict[str, str] | None = None) -> str:
    """The one line parse_args prints when it refuses ``argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as exited:
        parse_args(argv, environ or {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.removesuffix("\n")


# -- every option, from each place ------------------------------------------------


def test_every_option_has_a_sample_value() -> None:
    assert set(SAMPLES) == set(OPTIONS), "add a sample for a new option (or drop an old one)"


@pytest.mark.parametrize("flag", sorted(OPTIONS))
def test_every_option_is_settable_from_the_file_and_from_the_environment(
        flag: str, config_file: Callable[[str], str]) -> None:
    sample = SAMPLES[flag]
    default = parse_args([], {})
    on_command_line = parse_args(_argv(sample), {})
    from_file = parse_args(["--config", config_file(_toml(sample))], {})
    from_environment = parse_args([], _environment(sample))

    dest = OPTIONS[flag].action.dest
    assert getattr(on_command_line, dest) != getattr(default, dest), "the sample is the default"
    assert _parsed(from_file) == _parsed(on_command_line)
    assert _parsed(from_environment) == _parsed(on_command_line)
    expected = config_from_args(on_command_line)
    assert config_from_args(from_file) == expected
    assert config_from_args(from_environment) == expected
    if flag not in NOT_IN_SERVER_CONFIG:
        assert expected != config_from_args(default), f"{flag} changes nothing in ServerConfig"


def test_keys_and_variables_are_named_after_the_options() -> None:
    assert (OPTIONS["--tls-cert"].section, OPTIONS["--tls-cert"].key) == ("tls", "cert")
    assert OPTIONS["--max-line"].variable == "REACTOR_LIMITS_MAX_LINE"
    assert OPTIONS["--cluster"].key == "url" and OPTIONS["--cluster-lease"].key == "lease"
    assert OPTIONS["--flood-control"].variable == "REACTOR_FLOOD_ENABLED"
    assert "--config" not in OPTIONS and "--worker-of" not in OPTIONS


# -- precedence -------------------------------------------------------------------


def test_the_command_line_wins_over_the_environment_which_wins_over_the_file(
        config_file: Callable[[str], str]) -> None:
    path = config_file("[server]\nport = 4000\nhost = '127.0.0.2'\n[log]\ntext = false\n")
    environ = {"REACTOR_SERVER_PORT": "5000", "REACTOR_LOG_TEXT": "on"}
    assert parse_args([], {}).port == 1234
    assert parse_args(["--config", path], {}).port == 4000
    assert parse_args(["--config", path], environ).port == 5000
    both = parse_args(["--config", path, "--port", "6000", "--log-text", "off"], environ)
    assert (both.port, both.log_text) == (6000, False)
    # What no higher layer sets still comes from the file.
    assert both.host == "127.0.0.2"


def test_the_file_may_be_named_in_the_environment_and_the_command_line_wins(
        config_file: Callable[[str], str], tmp_path: Path) -> None:
    path = config_file("[server]\nport = 4000\n")
    other = tmp_path / "other.toml"
    other.write_text("[server]\nport = 4001\n")
    assert parse_args([], {"REACTOR_CONFIG": path}).port == 4000
    assert parse_args(["--config", str(other)], {"REACTOR_CONFIG": path}).port == 4001


def test_a_flag_set_in_the_file_can_be_turned_off_by_the_environment(
        config_file: Callable[[str], str]) -> None:
    path = config_file("[accounts]\nstore = 'a.db'\nallow-plaintext-passwords = true\n")
    assert parse_args(["--config", path], {}).allow_plaintext_passwords is True
    environ = {"REACTOR_ACCOUNTS_ALLOW_PLAINTEXT_PASSWORDS": "off"}
    assert parse_args(["--config", path], environ).allow_plaintext_passwords is False


def test_variables_of_other_programs_are_left_alone() -> None:
    environ = {"REACTOR_CHAT_PASSWORD": "x", "REACTOR_TEST_LOOP": "uvloop", "REACTOR": "1"}
    assert _parsed(parse_args([], environ)) == _parsed(parse_args([], {}))


# -- mistakes ---------------------------------------------------------------------


def test_an_unknown_key_is_named_with_its_file_and_line(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str]) -> None:
    path = config_file("# chat\n[server]\nport = 4000\n\n[limits]\nmax-lines = 100\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}:6: unknown key 'max-lines' in [limits] (did you mean max-line?)")


def test_an_unknown_section_is_named_with_its_file_and_line(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str]) -> None:
    path = config_file("[server]\nport = 4000\n[limit]\nmax-line = 100\n")
    assert refusal(capsys, ["--config", path]).startswith(
        f"{PROGRAM}: {path}:3: unknown section [limit] (did you mean limits?); the sections are ")


def test_a_wrong_type_is_named_with_its_file_line_and_key(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str]) -> None:
    path = config_file("[server]\nhost = '127.0.0.1'\nport = \"4000\"\n")
    assert refusal(capsys, ["--config", path]) == (
        f'{PROGRAM}: {path}:3: [server] port: must be an integer, got a string "4000"')
    path = config_file("[log]\ntext = 'off'\n")
    assert refusal(capsys, ["--config", path]) == (
        f'{PROGRAM}: {path}:2: [log] text: must be a boolean (true or false), got a string "off"')
    path = config_file("[flood]\nenabled = 1\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}:2: [flood] enabled: must be a boolean (true or false), "
        "got an integer 1")
    path = config_file("[server]\nport = true\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}:2: [server] port: must be an integer, "
        "got a boolean (true or false) true")


def test_a_value_out_of_range_is_named_as_the_command_line_names_it(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str]) -> None:
    path = config_file("[limits]\n  max-line = 15  # too short\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}:2: [limits] max-line: must be 16-1048576 bytes, got 15")
    path = config_file("[server]\nbackend = 'fork'\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}:2: [server] backend: must be one of select, threads, asyncio, "
        "got 'fork'")


def test_a_rate_out_of_range_is_named_as_a_rate_not_in_seconds(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert refusal(capsys, ["--line-rate", "0"]) == (
        f"{PROGRAM}: argument --line-rate: must be 0.1-1e+06 per second, got 0 (see --help)")


def test_a_key_found_only_by_toml_is_still_named_with_its_file(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str]) -> None:
    # An inline table: the light scan finds no "port =" line under [server].
    path = config_file("server = { port = 70000 }\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}: [server] port: must be 0-65535, got 70000")
    path = config_file("server.port = 70000\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: {path}:1: [server] port: must be 0-65535, got 70000")


def test_a_file_that_is_not_toml_or_not_there_is_one_line(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str],
        tmp_path: Path) -> None:
    path = config_file("[server]\nport = \n")
    assert refusal(capsys, ["--config", path]).startswith(
        f"{PROGRAM}: {path}: not valid TOML: Invalid value (at line 2, column 8)")
    missing = tmp_path / "nowhere.toml"
    assert refusal(capsys, ["--config", str(missing)]) == (
        f"{PROGRAM}: {missing}: cannot read the configuration file: No such file or directory")


def test_a_mistake_in_the_environment_names_the_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert refusal(capsys, [], {"REACTOR_SERVER_PORT": "70000"}) == (
        f"{PROGRAM}: environment variable REACTOR_SERVER_PORT: must be 0-65535, got 70000")
    assert refusal(capsys, [], {"REACTOR_LOG_TEXT": "maybe"}) == (
        f"{PROGRAM}: environment variable REACTOR_LOG_TEXT: must be on or off, got 'maybe'")
    assert refusal(capsys, [], {"REACTOR_SERVER_PROT": "1"}) == (
        f"{PROGRAM}: environment variable REACTOR_SERVER_PROT: no such option "
        "(did you mean REACTOR_SERVER_PORT?)")


def test_options_that_need_each_other_are_checked_across_the_layers(
        capsys: pytest.CaptureFixture[str], config_file: Callable[[str], str]) -> None:
    path = config_file("[tls]\ncert = 'c.pem'\n")
    assert refusal(capsys, ["--config", path]) == (
        f"{PROGRAM}: TLS needs both --tls-cert and --tls-key (see --help)")
    assert parse_args(["--config", path, "--tls-key", "k.pem"], {}).tls_key == "k.pem"


def test_the_web_options_need_a_web_port_and_workers_a_fixed_one(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert refusal(capsys, ["--web-origin", "https://chat.example.org"]) == (
        f"{PROGRAM}: argument --web-origin: needs --web-port (see --help)")
    assert refusal(capsys, ["--web-port", "8080", "--web-origin", "ftp://x"]) == (
        f"{PROGRAM}: argument --web-origin: not an origin (http[s]://host[:port]): "
        "'ftp://x' (see --help)")
    cluster = ["--cluster", "redis://127.0.0.1:1", "--workers", "2"]
    assert refusal(capsys, [*cluster, "--web-port", "0"]).startswith(
        f"{PROGRAM}: argument --web-port: with --workers, give a fixed port")
    assert parse_args([*cluster, "--web-port", "8080"], {}).web_port == 8080


def test_the_line_scan_finds_keys_under_their_own_table_only() -> None:
    text = "port = 1\n[server]\n# port = 2\n'port'=3\n[tls]\nport = 4\n"
    assert line_of(text, "server", "port") == 4
    assert line_of(text, "tls", "port") == 6
    assert line_of(text, "tls") == 5
    assert line_of(text, "limits", "max-line") is None


# -- check-config -----------------------------------------------------------------


def check_config(*args: str, env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reactor", "check-config", *args],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL, cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_check_config_prints_the_effective_configuration_with_secrets_masked(
        config_file: Callable[[str], str]) -> None:
    path = config_file("[server]\nport = 4000\n[cluster]\nurl = 'redis://:hunter2@db:6379/1'\n"
                       "[accounts]\nstore = 'rediss://chat:hunter2@db:6380/2'\n")
    result = check_config("--config", path, "--max-line", "8192",
                          env={"REACTOR_LOG_TEXT": "on"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "hunter2" not in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("port ") and "= 4000 " in line and line.endswith(f"# {path}:2")
               for line in lines), result.stdout
    assert any(line.startswith("url ") and '"redis://db:6379/1"' in line for line in lines)
    assert any(line.startswith("store ") and '"rediss://db:6380/2"' in line for line in lines)
    assert any(line.startswith("max-line ") and line.endswith("# command line") for line in lines)
    assert any(line.startswith("text ") and "true" in line and line.endswith(
        "# REACTOR_LOG_TEXT") for line in lines)
    assert any(line.startswith("backend ") and line.endswith("# default") for line in lines)


def test_check_config_output_is_itself_a_configuration_file(
        config_file: Callable[[str], str], tmp_path: Path) -> None:
    path = config_file("[server]\nport = 4000\n[limits]\nmax-line = 8192\n")
    first = check_config("--config", path)
    assert first.returncode == 0, first.stderr
    again = tmp_path / "effective.toml"
    again.write_text(first.stdout)
    assert _parsed(parse_args(["--config", str(again)], {})) == \
        _parsed(parse_args(["--config", path], {}))


def test_check_config_fails_with_one_line_and_status_2(
        config_file: Callable[[str], str], tmp_path: Path) -> None:
    path = config_file("[server]\nport = 70000\n")
    result = check_config("--config", path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"{PROGRAM}: {path}:2: [server] port: must be 0-65535, got 70000\n"
    # The TLS files are loaded too: a server would not start without them.
    path = config_file(f"[tls]\ncert = '{tmp_path}/none.pem'\nkey = '{tmp_path}/none.key'\n")
    result = check_config("--config", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{PROGRAM}: TLS: ") and result.stderr.count("\n") == 1
    # So is the cluster's URL (not reached: Redis may start after us).
    result = check_config("--config", config_file("[cluster]\nurl = 'http://db:6379'\n"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"{PROGRAM}: --cluster: 'http://db:6379' is not a Redis URL")


# -- the example file ---------------------------------------------------------------


def _example_keys() -> dict[tuple[str, str], int]:
    """(section, key) -> line of every key in the example, set or commented out."""
    keys: dict[tuple[str, str], int] = {}
    table = ""
    for number, line in enumerate(EXAMPLE.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            table = stripped[1:-1]
            continue
        match = re.match(r"^#?\s*([a-z][a-z0-9-]*)\s*=", stripped)
        if match:
            key = match.group(1)
            assert (table, key) not in keys, f"{EXAMPLE.name}:{number}: {key} twice"
            keys[(table, key)] = number
    return keys


def test_the_example_file_has_every_option_and_no_other() -> None:
    expected = {(option.section, option.key) for option in OPTIONS.values()}
    found = set(_example_keys())
    assert not expected - found, f"missing from {EXAMPLE.name}: {sorted(expected - found)}"
    assert not found - expected, f"in {EXAMPLE.name}, not an option: {sorted(found - expected)}"


def test_every_key_of_the_example_file_is_explained_by_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    keys = _example_keys()
    for (table, key), number in keys.items():
        above = lines[number - 2].strip()
        assert above.startswith("#") and number - 1 not in keys.values(), \
            f"{EXAMPLE.name}:{number}: [{table}] {key} has no comment above it"


def test_the_example_file_is_accepted_and_states_the_defaults() -> None:
    result = check_config("--config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert _parsed(parse_args(["--config", str(EXAMPLE)], {})) == _parsed(parse_args([], {}))


# -- a real server ------------------------------------------------------------------


def test_a_server_started_with_a_config_file_serves_by_it(
        backend: str, config_file: Callable[[str], str]) -> None:
    path = config_file("[limits]\nmax-line = 64\n")
    with server_process(backend, "--config", path) as server:
        with Clients(server.port) as clients:
            the_original_conversation(clients)
            carol = clients.login("Carol")
            carol.send("broadcast " + "x" * 100)
            assert "line longer than 64 bytes" in carol.read_line()
        assert server.terminate() == 0


def test_a_server_started_with_a_config_file_logs_by_it(
        config_file: Callable[[str], str]) -> None:
    path = config_file("[log]\ntext = true\nlevel = 'info'\n")
    with server_process("select", log_level="INFO") as plain, \
            server_process("select", "--config", path, log_level="INFO") as configured:
        for server in (plain, configured):
            with Clients(server.port) as clients:
                the_original_conversation(clients)
            server.wait_for_log(lambda line: "Bob disconnected." in line)
        assert any('"Hello Bob!"' in line for line in configured.log), configured.log
        assert "[Server] Message from Alice to Bob: (10 characters)" in plain.log, plain.log
        assert not any("Hello Bob!" in line for line in plain.log)


def test_an_option_type_that_takes_a_number_refuses_text_in_the_file() -> None:
    # The marker the file's type check relies on, on every numeric option.
    numeric = [option for option in OPTIONS.values()
               if isinstance(parse_args([], {}).__dict__.get(option.action.dest), int | float)
               and not isinstance(parse_args([], {}).__dict__.get(option.action.dest), bool)]
    assert numeric
    untyped: list[Option] = [option for option in numeric if str in option.types]
    assert not untyped, [option.flag for option in untyped]
