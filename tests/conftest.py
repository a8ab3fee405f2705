from __future__ import annotations

import os
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


# The suite mostly waits -- for servers, child processes, Redis, deadlines --
# rather than computing, so `-n auto` (pyproject's addopts) runs more workers
# than there are cores.  PYTEST_XDIST_AUTO_NUM_WORKERS still decides if set;
# `-n 0` runs everything in this process.
WORKERS_PER_CORE = 2
# Fixtures of these scopes are made once per worker: the tests sharing one
# go to the same worker (--dist loadgroup), or each worker would make it again.
SHARED_SCOPES = frozenset({"module", "package", "class"})
REDIS_FIXTURES = frozenset({"redis_server", "redis_tls_server"})


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # (a hook of xdist's)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return WORKERS_PER_CORE * len(os.sched_getaffinity(0))


@pytest.hookimpl(tryfirst=True)  # before -m deselects, and before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # A soak test is slow too: -m "not slow" replaces the default -m "not soak".
        if item.get_closest_marker("soak") is not None:
            item.add_marker(pytest.mark.slow)
        group = _worker_group(item)
        if group is not None and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))


def _worker_group(item: pytest.Item) -> str | None:
    """The tests that must share a worker, named; None for any worker."""
    # Cluster nodes give Redis a second to answer (less than a lease) before
    # counting it out of reach: two clusters busy at once on two cores can
    # starve each other past that, so they run one after the other.
    fixtures = set(getattr(item, "fixturenames", ()))  # (a Function's; not every Item's)
    if item.nodeid.startswith("tests/cluster/") or REDIS_FIXTURES & fixtures:
        return "cluster"
    if _shares_a_fixture(item):
        return item.nodeid.split("::")[0]
    return None


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture of the suite's own (one with a base
    node id: a plugin's has none) that outlives a test."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(definition.scope in SHARED_SCOPES and definition.baseid
               for definitions in info.name2fixturedefs.values()
               for definition in definitions)


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
