"""The web endpoint's standard-library part: without the ``[web]`` extra the
server still imports, and asking for the page says what to install."""

from __future__ import annotations

import subprocess
import sys

from tests.faults import REPO


def test_the_web_package_without_websockets_loads_only_the_standard_library() -> None:
    code = (
        "import sys\n"
        "import reactor.web, reactor.web.http\n"
        "site = reactor.web.http.Site()\n"
        "assert '/' in site.files and '/app.js' in site.files, sorted(site.files)\n"
        "try:\n"
        "    reactor.web.require_websockets()\n"
        "except reactor.web.WebSetupError as error:\n"
        "    print(error)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}\n"
        "             - set(sys.stdlib_module_names) - {'reactor', 'protocol', '__main__'}))\n"
    )
    result = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "--web-port needs the websockets package: pip install 'reactor-chat[web]'", "[]"]
