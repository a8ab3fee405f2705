"""The server's layers point down only, and no two modules import each other.

Read from the source with :mod:`ast` (nothing is imported): every import
counts -- at the top, under ``TYPE_CHECKING``, or inside a function -- since
each is a dependency a reader must follow.  The layers, lowest first::

    protocol                      sans-IO
    core                          chat, connection, transport, contracts, ...
    reactor.redis                 URL, RESP, key prefix
    backends | accounts | cluster |
    admin | history               siblings: never import each other
    reactor.app                   the composition root
    entry points                  python -m reactor (and its options), python -m reactor.accounts
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("protocol", "reactor")

# (rank, group): a module may import a lower rank, or its own group.
PROTOCOL, CORE, REDIS, FEATURES, APP, ENTRY = range(6)
ENTRY_POINTS = {"reactor", "reactor.__main__", "reactor.options", "reactor.accounts.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer(module: str) -> tuple[int, str]:
    if module in ENTRY_POINTS:
        return ENTRY, "entry"
    if module.startswith("protocol"):
        return PROTOCOL, "protocol"
    if module == "reactor.app":
        return APP, "app"
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in ("backends", "accounts", "cluster", "admin", "history"):
        return FEATURES, parts[1]
    if len(parts) > 1 and parts[1] == "redis":
        return REDIS, "redis"
    return CORE, "core"


def _target(name: str) -> str | None:
    """The module of ours that ``name`` (a module, or a name in one) is, if any."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> set[str]:
    """Every module of ours that ``module`` imports, anywhere in it."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                found.add(target)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_import_points_down_or_stays_in_its_own_group() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        rank, group = layer(module)
        for target in targets:
            target_rank, target_group = layer(target)
            if target_rank > rank or (target_rank == rank and target_group != group):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_modules_import_each_other_even_through_others() -> None:
    # Tarjan's strongly connected components: any with two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_only_the_composition_root_and_the_backends_know_the_chat_service() -> None:
    knowing = {module for module, targets in GRAPH.items() if "reactor.chat" in targets}
    assert knowing <= {"reactor.app"} | {m for m in MODULES if m.startswith("reactor.backends.")}


def test_accounts_and_cluster_reach_redis_only_through_its_own_package() -> None:
    for module, targets in GRAPH.items():
        group = layer(module)[1]
        if group in ("accounts", "cluster"):
            other = "cluster" if group == "accounts" else "accounts"
            assert not any(layer(t)[1] == other for t in targets), module


def test_the_layering_test_sees_the_layers() -> None:
    """A check of the checker: it finds the imports it is meant to judge."""
    assert "reactor.contracts" in GRAPH["reactor.chat"]
    assert "reactor.chat" in GRAPH["reactor.app"]
    assert "reactor.cluster.whiteboard" in GRAPH["reactor.app"]  # the lazy import, too
    assert layer("reactor.redis.url") == (REDIS, "redis")


def test_tests_are_sorted_by_layer_too() -> None:
    """docs/design.md#tests: a test file lives in its layer's folder; only
    shared helpers and conftest.py stay at the root of tests/."""
    at_root = sorted(path.name for path in (REPO / "tests").glob("test_*.py"))
    assert at_root == [], f"move these into a layer's folder under tests/: {at_root}"
