"""The server's options from a TOML file and the environment, beside the command line.

Goals:

* One declaration per option.  The command-line parser is the list of
  options; this module reads it.  An option's section in the file is its
  argparse group (made with :func:`section`), its key is its long name with
  the section's prefix left out (``--tls-cert`` is ``cert`` in ``[tls]``)
  unless :func:`name_in_file` gives another, and its environment variable is
  ``REACTOR_<SECTION>_<KEY>`` (``REACTOR_TLS_CERT``).  An option added to the
  parser is in the file and the environment with nothing more to write.
* One checker per value.  A value from the file or the environment goes
  through the option's own argparse ``type`` and ``choices``, so a range is
  checked once, and the message names where the value came from (the file,
  its line and the key; or the variable) instead of ``--option``.
* Precedence without a merge of our own: the file and the environment become
  command-line arguments placed *before* the real ones, and argparse keeps the
  last value it sees -- command line > environment > file > defaults.

Everything here is the standard library (``tomllib``).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

ENV_PREFIX = "REACTOR_"
# The file's path may come from the environment too (containers); --config wins.
CONFIG_VARIABLE = "REACTOR_CONFIG"

_BOOLEAN_WORDS = {"on": True, "true": True, "yes": True, "1": True,
                  "off": False, "false": False, "no": False, "0": False}

F = TypeVar("F", bound=Callable[..., Any])


class SettingsError(Exception):
    """A mistake in the configuration file or the environment: one line, which
    names the file, line and key (or the variable)."""


# -- declaring options (used by the parser) ----------------------------------


def section(parser: argparse.ArgumentParser, name: str,
            description: str | None = None) -> argparse._ArgumentGroup:
    """An argparse group whose options are the ``[name]`` table of the file."""
    variables = f"{ENV_PREFIX}{name.upper()}_<KEY> in the environment"
    group = parser.add_argument_group(
        f"[{name}]", f"{description}; {variables}" if description else variables)
    group.config_section = name  # type: ignore[attr-defined]
    return group


def name_in_file(action: argparse.Action, key: str, *, secret: bool = False) -> None:
    """Give an option a key other than its long name; ``secret`` masks its
    value where the effective configuration is shown (a URL's password)."""
    action.config_key = key  # type: ignore[attr-defined]
    action.help = f"{action.help}; key in the file: {key}"
    action.config_secret = secret  # type: ignore[attr-defined]


def accepts(*types: type) -> Callable[[F], F]:
    """Mark an argparse ``type`` function with the TOML types its option takes
    in the file (a string is refused where a number is meant)."""
    def mark(function: F) -> F:
        function.config_types = types  # type: ignore[attr-defined]
        return function
    return mark


@dataclass(frozen=True)
class Option:
    """One option of the parser as the file and the environment know it."""

    section: str
    key: str
    action: argparse.Action

    @property
    def flag(self) -> str:
        return next(name for name in self.action.option_strings if name.startswith("--"))

    @property
    def variable(self) -> str:
        return f"{ENV_PREFIX}{self.section}_{self.key}".upper().replace("-", "_")

    @property
    def is_flag(self) -> bool:
        """A switch with no value (``store_true``)."""
        return isinstance(self.action, argparse._StoreTrueAction)

    @property
    def secret(self) -> bool:
        return bool(getattr(self.action, "config_secret", False))

    @property
    def types(self) -> tuple[type, ...]:
        if self.is_flag:
            return (bool,)
        return tuple(getattr(self.action.type, "config_types", (str,)))


def options_of(parser: argparse.ArgumentParser) -> list[Option]:
    """Every option that has a place in the file, in the parser's order."""
    options = []
    for group in parser._action_groups:
        name = getattr(group, "config_section", None)
        if name is None:
            continue
        for action in group._group_actions:
            long_name = next(n for n in action.option_strings if n.startswith("--"))[2:]
            key = getattr(action, "config_key", None)
            if key is None:
                key = long_name.removeprefix(f"{name}-")
            options.append(Option(name, key, action))
    return options


# -- reading values -----------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """A value for an option, as command-line text, and where it came from."""

    option: Option
    text: str  # a flag's is "on" or "off"
    origin: str  # "path:line", or the environment variable's name

    def as_arguments(self) -> list[str]:
        if self.option.is_flag:
            return [self.option.flag] if self.text == "on" else []
        # "--opt=value": a value that begins with "-" stays a value.
        return [f"{self.option.flag}={self.text}"]


def _check(option: Option, text: str) -> None:
    """The option's own checks, as argparse would run them on ``text``."""
    if option.is_flag:
        return  # "on" or "off", nothing more to check
    try:
        value = option.action.type(text) if callable(option.action.type) else text
    except argparse.ArgumentTypeError as error:
        raise SettingsError(str(error)) from None
    except ValueError:
        raise SettingsError(f"invalid value {text!r}") from None
    choices = option.action.choices
    if choices is not None and value not in choices:
        raise SettingsError(f"must be one of {', '.join(map(str, choices))}, got {text!r}")


@contextlib.contextmanager
def _named(where: str) -> Iterator[None]:
    """Prefix a SettingsError's message with where the value was."""
    try:
        yield
    except SettingsError as error:
        raise SettingsError(f"{where}: {error}") from None


_TOML_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
                    str: "a string", list: "an array", dict: "a table"}


def _type_name(value: object) -> str:
    return _TOML_TYPE_NAMES.get(type(value), type(value).__name__)


def _file_value_as_text(option: Option, value: object) -> str:
    """The command-line text for a TOML value, or SettingsError for a wrong type."""
    wanted = option.types
    # bool is an int to Python, not to TOML.
    right_type = isinstance(value, wanted) and (bool in wanted or not isinstance(value, bool))
    if not right_type:
        expected = " or ".join(_TOML_TYPE_NAMES[kind] for kind in wanted)
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "a table"
        raise SettingsError(f"must be {expected}, got {_type_name(value)} {shown}")
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, float) else str(value)


def _suggestion(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def line_of(text: str, table: str, key: str | None = None) -> int | None:
    """The line of ``[table]`` (or of ``key`` in it) in TOML ``text``.

    A light scan, not a parser: tomllib reports no positions for keys.  It
    finds headers, ``key =`` lines under them, and dotted ``table.key =``
    lines; for anything fancier it may find nothing, and the caller then
    names the file and key without a line.
    """
    current: str | None = None
    header = re.compile(r"^\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    quoted = r"[\"']?"
    if key is not None:
        plain = re.compile(rf"^{quoted}{re.escape(key)}{quoted}\s*=")
        dotted = re.compile(rf"^{quoted}{re.escape(table)}{quoted}\s*\.\s*"
                            rf"{quoted}{re.escape(key)}{quoted}\s*=")
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        match = header.match(stripped)
        if match:
            current = re.sub(r"[\"'\s]", "", match.group(1))
            if key is None and current == table:
                return number
            continue
        if key is None:
            if current is None and re.match(rf"^{quoted}{re.escape(table)}{quoted}\s*[.=]",
                                            stripped):
                return number
            continue
        if current == table and plain.match(stripped):
            return number
        if current is None and dotted.match(stripped):
            return number
    return None


def read_file(path: str, options: list[Option]) -> list[Setting]:
    """The settings in a TOML file, checked: SettingsError names the file,
    the line where it can be found, and the key."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as error:
        raise SettingsError(f"{path}: cannot read the configuration file: "
                            f"{error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError:
        raise SettingsError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"{path}: not valid TOML: {error}") from None

    def where(table: str, key: str | None = None) -> str:
        line = line_of(text, table, key)
        return path if line is None else f"{path}:{line}"

    by_section: dict[str, dict[str, Option]] = {}
    for option in options:
        by_section.setdefault(option.section, {})[option.key] = option
    settings = []
    for table, body in document.items():
        if table not in by_section:
            raise SettingsError(f"{where(table)}: unknown section [{table}]"
                                f"{_suggestion(table, by_section)}; the sections are "
                                + ", ".join(f"[{name}]" for name in by_section))
        if not isinstance(body, dict):
            raise SettingsError(f"{where(table)}: {table} must be a table ([{table}]), "
                                f"got {_type_name(body)}")
        known = by_section[table]
        for key, value in body.items():
            origin = where(table, key)
            if key not in known:
                raise SettingsError(f"{origin}: unknown key {key!r} in [{table}]"
                                    f"{_suggestion(key, known)}")
            option = known[key]
            with _named(f"{origin}: [{table}] {key}"):
                text_value = _file_value_as_text(option, value)
                _check(option, text_value)
            settings.append(Setting(option, text_value, origin))
    return settings


def read_environment(environ: Mapping[str, str], options: list[Option]) -> list[Setting]:
    """The settings in ``REACTOR_<SECTION>_<KEY>`` variables, checked.  A
    variable under a section's prefix that names no option is refused (a
    typo would otherwise be ignored); other ``REACTOR_`` variables (the
    client's, the tests') are not ours and are left alone."""
    by_variable = {option.variable: option for option in options}
    prefixes = {f"{ENV_PREFIX}{option.section.upper()}_" for option in options}
    settings = []
    for name in sorted(environ):
        option = by_variable.get(name)
        if option is None:
            if any(name.startswith(prefix) for prefix in prefixes):
                raise SettingsError(f"environment variable {name}: no such option"
                                    f"{_suggestion(name, by_variable)}")
            continue
        text = environ[name]
        with _named(f"environment variable {name}"):
            if bool in option.types:
                word = text.strip().lower()
                if word not in _BOOLEAN_WORDS:
                    raise SettingsError(f"must be on or off, got {text!r}")
                text = "on" if _BOOLEAN_WORDS[word] else "off"
            _check(option, text)
        settings.append(Setting(option, text, name))
    return settings


def config_path(argv: list[str], environ: Mapping[str, str]) -> str | None:
    """``--config PATH`` from the command line, else ``$REACTOR_CONFIG``."""
    finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    finder.add_argument("--config")
    known, _ = finder.parse_known_args(argv)
    if known.config is not None:
        return str(known.config)
    return environ.get(CONFIG_VARIABLE) or None


def layered(parser: argparse.ArgumentParser, argv: list[str],
            environ: Mapping[str, str] | None = None) -> tuple[list[str], list[Setting]]:
    """The arguments that put the file's and the environment's settings
    beneath ``argv`` (to be parsed as ``[*arguments, *argv]``), and those
    settings, for :func:`describe`.  Raises SettingsError."""
    environ = os.environ if environ is None else environ
    options = options_of(parser)
    path = config_path(argv, environ)
    # One setting per option: the environment's replaces the file's (a flag
    # set in the file can be turned off only by leaving its argument out).
    settings = {} if path is None else {s.option.flag: s for s in read_file(path, options)}
    settings.update((s.option.flag, s) for s in read_environment(environ, options))
    chosen = list(settings.values())
    return [argument for setting in chosen for argument in setting.as_arguments()], chosen


# -- showing the effective configuration ---------------------------------------


def given_on_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The ``dest`` of every option ``argv`` sets (abbreviations and ``=`` forms
    understood as argparse understands them)."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    try:
        given, _ = parser.parse_known_args(argv)
    except SystemExit:  # the real parse has already accepted argv
        return set()
    return set(vars(given))


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):  # a list option, written as on the command line
        value = ",".join(map(str, value))
    return json.dumps(str(value), ensure_ascii=False)  # a valid TOML basic string


def describe(options: list[Option], values: argparse.Namespace, origins: Mapping[str, str],
             mask: Callable[[str], str]) -> str:
    """The effective configuration as a TOML document, each value followed by
    where it came from; secret values pass through ``mask``; options with no
    value are shown commented out."""
    lines: list[str] = []
    current = None
    width = max(len(option.key) for option in options)
    for option in options:
        if option.section != current:
            if current is not None:
                lines.append("")
            lines.append(f"[{option.section}]")
            current = option.section
        value = getattr(values, option.action.dest)
        origin = origins.get(option.action.dest, "default")
        if value is None:
            lines.append(f"# {option.key} is not set".ljust(width + 24) + f"  # {origin}")
            continue
        if option.secret and isinstance(value, str):
            value = mask(value)
        lines.append(f"{option.key.ljust(width)} = {_toml_value(value)}".ljust(width + 24)
                     + f"  # {origin}")
    return "\n".join(lines) + "\n"
