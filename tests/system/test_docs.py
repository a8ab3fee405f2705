"""The documentation says what the code does, where a test can tell.

* The option table of ``docs/running.md`` names exactly the options that
  ``python -m reactor --help`` shows: an option added, renamed or removed
  without its row fails here, and so does a row left for an option that is
  gone.  The ``--backend`` row names every backend of the registry.
* The configuration file's section names every table of the file, and each
  key that is not its option's name less the section's prefix.
* The README's test command is a command CI runs (a line of ``.ci/run``),
  so that a newcomer runs what CI runs.
* Every relative link in the README, ``docs/*.md`` and ``bench/README.md``
  leads to a file that exists, and a ``#fragment`` to a heading of that page,
  with the anchors GitHub makes.

Markdown is read as text, with no Markdown library: tables are rows of
``|``-separated cells, and fenced code blocks are left out of the link and
heading scans.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from reactor import BACKENDS
from reactor.options import build_parser
from reactor.settings import options_of

# The repository: the nearest directory above this file with a pyproject.toml
# (so the test can move between the layers' test directories).
ROOT = next(folder for folder in Path(__file__).resolve().parents
            if (folder / "pyproject.toml").exists())
RUNNING = ROOT / "docs" / "running.md"
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Pages another branch writes: a link to one is checked once it exists.

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_OPTION = re.compile(r"`(--[a-z0-9][a-z0-9-]*)")


def _prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines: list[str] = []
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _section(page: Path, title: str) -> list[str]:
    """The prose lines under the heading ``title``, up to the next heading
    of the same or a higher level."""
    lines = _prose_lines(page.read_text(encoding="utf-8"))
    for start, line in enumerate(lines):
        match = _HEADING.match(line)
        if match and match.group(2) == title:
            level = len(match.group(1))
            body = []
            for following in lines[start + 1:]:
                heading = _HEADING.match(following)
                if heading and len(heading.group(1)) <= level:
                    break
                body.append(following)
            return body
    raise AssertionError(f"{page.relative_to(ROOT)} has no heading {title!r}")


def _table_rows(lines: list[str]) -> list[list[str]]:
    """Cells of every body row of the Markdown tables in ``lines`` (header
    and separator rows left out)."""
    rows: list[list[str]] = []
    in_table = False
    for line in lines:
        stripped = line.strip()
        if not stripped.startswith("|"):
            in_table = False
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", stripped.strip("|"))]
        if not in_table:
            in_table = True  # the header row
            continue
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells if cell):
            continue  # the separator row
        rows.append(cells)
    return rows


def _documented_options() -> dict[str, list[str]]:
    """Option -> the cells of its row in docs/running.md's option table."""
    documented: dict[str, list[str]] = {}
    for cells in _table_rows(_section(RUNNING, "Server options")):
        for option in _OPTION.findall(cells[0]):
            assert option not in documented, f"{option} has two rows in docs/running.md"
            documented[option] = cells
    return documented


def _help_options() -> set[str]:
    """The long options that ``python -m reactor --help`` shows."""
    parser = build_parser()
    shown: set[str] = set()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        shown.update(name for name in action.option_strings if name.startswith("--"))
    return shown


def test_the_option_table_names_every_option_of_help_and_no_other() -> None:
    documented = set(_documented_options())
    shown = _help_options()
    assert shown, "build_parser() shows no options"
    assert not shown - documented, f"in --help, missing from docs/running.md: {sorted(shown - documented)}"
    assert not documented - shown, f"in docs/running.md, not in --help: {sorted(documented - shown)}"


def test_the_backend_row_names_every_registered_backend() -> None:
    row = " ".join(_documented_options()["--backend"][1:])
    missing = [name for name in BACKENDS if f"`{name}`" not in row]
    assert not missing, f"the --backend row of docs/running.md does not name {missing}"


def test_the_configuration_file_section_names_every_table_and_every_renamed_key() -> None:
    """docs/running.md lists the file's tables, and the keys that are not
    their option's name less the section's prefix (``--cluster`` is ``url``
    in ``[cluster]``): a table or such a key added without a word there
    fails here."""
    text = " ".join(_section(RUNNING, "Configuration file and environment"))
    options = options_of(build_parser())
    missing = [f"[{name}]" for name in dict.fromkeys(option.section for option in options)
               if f"`[{name}]`" not in text]
    for option in options:
        renamed = option.flag not in (f"--{option.section}-{option.key}", f"--{option.key}")
        if renamed and (f"`{option.flag}`" not in text or f"`{option.key}`" not in text):
            missing.append(f"{option.flag} (`{option.key}` in [{option.section}])")
    assert not missing, f"docs/running.md's configuration file section does not name {missing}"


def _ci_lines() -> list[str]:
    """The lines of .ci/run, stripped, comments left out."""
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _readme_pytest_commands() -> list[str]:
    """Lines of the README's shell code blocks that run pytest."""
    commands: list[str] = []
    fenced = False
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced and "pytest" in line:
            commands.append(line.strip())
    return commands


def test_the_readme_runs_the_tests_as_ci_does() -> None:
    """The README shows one test command, and .ci/run runs exactly that
    command, on a line of its own (whatever else CI runs around it)."""
    readme = _readme_pytest_commands()
    assert len(readme) == 1, f"the README shows {len(readme)} pytest commands: {readme}"
    assert readme[0] in _ci_lines(), f".ci/run does not run the README's {readme[0]!r}"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped (word
    characters, spaces and hyphens kept), spaces turned into hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)  # inline HTML
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        match = _HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(2))
            seen = counts.get(anchor, 0)
            counts[anchor] = seen + 1
            anchors.add(anchor if seen == 0 else f"{anchor}-{seen}")
    return anchors


def _relative_links(page: Path) -> list[str]:
    links = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        for target in _LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # no scheme
                links.append(target)
    return links


def test_github_anchors_are_made_as_github_makes_them() -> None:
    assert github_anchor("One chat on many servers (the cluster)") == \
        "one-chat-on-many-servers-the-cluster"
    assert github_anchor("TLS: select-tls beside select") == "tls-select-tls-beside-select"
    assert github_anchor("Files in bench/reference") == "files-in-benchreference"
    assert github_anchor("The `--backend` option") == "the---backend-option"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    broken = []
    for link in _relative_links(page):
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in _anchors(target):
            broken.append(f"{link}: no heading with that anchor in {target.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_page_the_links_are_checked_on_exists() -> None:
    for page in (ROOT / "README.md", ROOT / "bench" / "README.md", RUNNING,
                 ROOT / "docs" / "protocol.md", ROOT / "docs" / "client.md"):
        assert page in PAGES and page.exists(), page
