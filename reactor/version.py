"""The version both programs show with ``--version``.

The installed package's metadata says which version is installed; a source
tree that was never installed (``python -m reactor`` from a checkout) falls
back to :data:`VERSION`, which ``pyproject.toml`` also reads, so the number is
written once.
"""

from __future__ import annotations

from importlib import metadata

VERSION = "0.1.0"
DISTRIBUTION = "reactor-chat"


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return VERSION
