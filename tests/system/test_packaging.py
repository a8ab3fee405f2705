"""The wheel, installed as a user installs it, far from the repository.

``python -m build`` makes the wheel from a copy of the sources (so the
checkout gets no build/ or egg-info); it is installed into a fresh virtual
environment in a temporary directory, which sees this environment's
packages (``--system-site-packages``) for the client's dependencies, so
nothing is downloaded.  The installed ``reactor-chat-server``, started from
that directory with nothing of the repository on its path, serves the
original conversation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reactor.version import VERSION
from tests.faults import REPO, ServerProcess
from tests.support import Clients, the_original_conversation

pytestmark = pytest.mark.slow

PACKAGES = ("protocol", "reactor", "cli")
SOURCES = ("pyproject.toml", "README.md", "LICENSE")
PROBE = "reactor/packaging_probe"


def _source_files() -> set[str]:
    """Every file of the packages in the checkout, as a wheel names it."""
    files = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(REPO).as_posix())
    return files


def _clean_environment() -> dict[str, str]:
    """This process's environment without what would put the repository on the path."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build", reason="the 'build' package is not installed (pip install build)")
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # A subpackage no configuration names, with a web page in it: found and
    # packed as reactor/redis/ or reactor/web/ will be.
    probe = source / PROBE
    (probe / "static").mkdir(parents=True)
    (probe / "__init__.py").write_text('"""A package the build must find by itself."""\n')
    (probe / "static" / "index.html").write_text("<!doctype html><title>chat</title>\n")
    dist = tmp_path_factory.mktemp("dist")
    # No isolation: the build uses this environment's setuptools, so that no
    # package index is needed.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
         str(source)],
        capture_output=True, text=True, timeout=300, cwd=dist, env=_clean_environment(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` directory of a fresh virtual environment with the wheel installed."""
    home = tmp_path_factory.mktemp("venv")
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "--force-reinstall", "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=300, cwd=home, env=_clean_environment(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    yield venv / "bin"


def _run(program: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60,
                          cwd=program.parent.parent, env=_clean_environment(),
                          stdin=subprocess.DEVNULL)


def test_the_wheel_holds_every_file_of_every_package_and_both_programs(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith("entry_points.txt")]
        scripts = archive.read(entry_points).decode()
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        summary = archive.read(metadata).decode()
    missing = (_source_files() | {f"{PROBE}/__init__.py", f"{PROBE}/static/index.html"}) - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert not [name for name in names if name.startswith("tests/")]
    assert "reactor-chat-server = reactor.__main__:main" in scripts
    assert "reactor-chat = cli.__main__:main" in scripts
    assert f"Version: {VERSION}" in summary
    assert "selectors" in summary and "thread" in summary and "asyncio" in summary


def test_the_installed_programs_run_from_the_installation(installed: Path) -> None:
    where = _run(installed / "python", "-c", "import reactor, cli, protocol; "
                 "print(reactor.__file__, cli.__file__, protocol.__file__)")
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed.parent), where.stdout
    server = _run(installed / "reactor-chat-server", "--version")
    assert (server.returncode, server.stdout) == (0, f"reactor-chat-server {VERSION}\n")
    client = _run(installed / "reactor-chat", "--version")
    assert (client.returncode, client.stdout) == (0, f"reactor-chat {VERSION}\n"), client.stderr
    check = _run(installed / "reactor-chat-server", "check-config", "--port", "4000")
    assert check.returncode == 0, check.stderr
    assert "port" in check.stdout and "# command line" in check.stdout


def test_the_installed_server_passes_the_original_conversation(installed: Path) -> None:
    process = subprocess.Popen(
        [str(installed / "reactor-chat-server"), "--host", "127.0.0.1", "--port", "0",
         "--keepalive-idle", "0", "--log-level", "WARNING"],
        cwd=installed.parent.parent, env=_clean_environment(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    server = ServerProcess(process)
    try:
        server.wait_listening()
        with Clients(server.port) as clients:
            the_original_conversation(clients)
        assert server.terminate() == 0
    finally:
        server.cleanup()
