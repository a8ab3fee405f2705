"""The web endpoint without the ``[web]`` extra: the page's files still load
(standard library only: tests/system/test_standard_library_only.py), and
asking for the WebSocket says, in one line, what to install."""

from __future__ import annotations

import subprocess
import sys

from tests.faults import REPO

CODE = """
import reactor.web, reactor.web.http
files = reactor.web.http.Site().files
assert {'/', '/index.html', '/app.js', '/text.js', '/style.css'} <= set(files), sorted(files)
try:
    reactor.web.require_websockets()
except reactor.web.WebSetupError as error:
    print(error)
"""


def test_without_websockets_the_page_loads_and_the_socket_asks_for_the_extra() -> None:
    result = subprocess.run([sys.executable, "-S", "-c", CODE], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "--web-port needs the websockets package: pip install 'reactor-chat[web]'"]


def test_a_server_asked_for_a_web_port_without_the_extra_says_what_to_install() -> None:
    result = subprocess.run([sys.executable, "-S", "-m", "reactor", "--host", "127.0.0.1",
                             "--port", "0", "--web-port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "reactor-chat-server: --web-port needs the websockets package: "
        "pip install 'reactor-chat[web]'"]
