from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reactor import BACKENDS
from reactor.backends.base import Server
from tests.support import Clients, running_server

# Property tests check what is true of every input, not how fast: on shared,
# noisy 2-core machines one example can stall for hundreds of milliseconds,
# which hypothesis's default 200 ms deadline would report as a failure.
settings.register_profile("reactor", deadline=None)
settings.load_profile("reactor")


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A soak test is slow too: -m "not slow" replaces the default -m "not soak".
    for item in items:
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test that takes this runs once per backend."""
    return str(request.param)


@pytest.fixture
def server(backend: str) -> Iterator[Server]:
    with running_server(backend) as running:
        yield running


@pytest.fixture
def clients(server: Server) -> Iterator[Clients]:
    pool = Clients(server.port)
    try:
        yield pool
    finally:
        pool.close_all()
