"""The top-level packages and modules of itff_platform import each other as a clean stack, without cycles.

Every import counts, module-level or deferred into a function: a deferred import only hides a cycle from the
interpreter, not from the reader. Imports under `if TYPE_CHECKING:` are annotations and never run, so they do
not count (models names Settings in its hints; settings reads the model-family registry).

The stack, top first, each layer importing only layers below it (as `pytest -s` prints it):

    cli
    cli_runs                 the CLI's Dagster runs
    definitions
    defs, serving            Dagster assets; the BentoML service (which writes the prediction log)
    monitoring               drift, live quality, replay
    reporting, training      studies, evaluation, promotion
    lake                     Delta tables
    contracts, features, market, registry_paths
                             contracts: champions, answers and their log record, the signal rule: what serving,
                             monitoring and training share
    settings
    fingerprints, local_http, manifests, models, rules
                             models: the families and their registry, which settings validate against

"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import itff_platform

PACKAGE = Path(itff_platform.__file__).parent


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """(module name, line) of every import anywhere in the tree, skipping `if TYPE_CHECKING:` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "itff_platform":
                yield from ((f"itff_platform.{alias.name}", node.lineno) for alias in node.names)
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        yield from _imports(node)


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """top-level package or module -> {what it imports: ["file:line", ...]}."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        source = relative.parts[0].removesuffix(".py")
        if source == "__init__":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[source]  # every module is a node, even one that imports nothing of ours
        for name, line in _imports(tree):
            parts = name.split(".")
            if parts[0] == "itff_platform" and len(parts) > 1 and parts[1] != source:
                graph[source][parts[1]].append(f"{relative}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each a cycle or a knot of them."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layers(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Bottom-up: each node sits one layer above the highest layer it imports."""
    height: dict[str, int] = {}

    def level(node: str) -> int:
        if node not in height:
            height[node] = 0  # a cycle would recurse forever; `cycles` reports those first
            height[node] = 1 + max((level(t) for t in graph.get(node, {})), default=-1)
        return height[node]

    for node in graph:
        level(node)
    return [sorted(n for n, h in height.items() if h == i) for i in range(max(height.values()) + 1)]


def test_no_cycles_between_top_level_packages():
    graph = import_graph()
    knots = cycles(graph)
    detail = [
        f"{source} -> {target} ({', '.join(files)})"
        for knot in knots
        for source in knot
        for target, files in graph[source].items()
        if target in knot
    ]
    assert not knots, f"import cycles between top-level packages: {knots}\n" + "\n".join(detail)
    print("\nlayers, top first:\n" + "\n".join(", ".join(layer) for layer in reversed(layers(graph))))


def test_serving_and_monitoring_meet_only_through_contracts():
    graph = import_graph()
    assert "serving" not in graph["monitoring"], graph["monitoring"]["serving"]
    assert "training" not in graph["serving"], graph["serving"]["training"]


def test_the_check_sees_a_cycle_hidden_in_a_function(tmp_path):
    (tmp_path / "alpha").mkdir()
    (tmp_path / "beta").mkdir()
    (tmp_path / "alpha" / "a.py").write_text("from itff_platform.beta.b import thing\n")
    (tmp_path / "beta" / "b.py").write_text("def later():\n    from itff_platform.alpha import a\n")
    (tmp_path / "gamma.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from itff_platform.alpha import a\n"
    )
    (tmp_path / "alpha" / "c.py").write_text("import itff_platform.gamma\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["alpha", "beta"]]
    assert "alpha" not in graph["gamma"]  # type-checking only
