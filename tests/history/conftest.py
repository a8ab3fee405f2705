from pathlib import Path

import pytest


@pytest.fixture
def db(tmp_path: Path) -> str:
    """Where the registered names (and, beside them, the history) are kept."""
    return str(tmp_path / "accounts.db")
