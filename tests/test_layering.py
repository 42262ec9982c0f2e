"""The package's import graph: no module imports one that imports it back, and data flows one way.

The graph is read from the source with ``ast`` (nothing is imported), counting imports inside
functions too: a lazy import hides a circle from Python's import machinery, not from the design.
Importing a package counts as importing what its ``__init__`` imports.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from captum_tokenlrp._core.capture import LayerProjections

PACKAGE = Path(__file__).resolve().parents[1] / "captum_tokenlrp"

#: Circles left on purpose, each with what removes it. None: the last one (``report`` read the CLI's list of
#: image suffixes while the CLI called ``report``) went when the list moved to ``images``.
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def import_graph() -> dict[str, set[str]]:
    """``module -> the package's modules it imports``, by dotted name."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # ``from . import text`` names a module; ``from .base import AttentionSite`` a name in one.
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            imported.update(candidate for candidate in candidates if candidate in modules and candidate != name)
        graph[name] = imported
    return graph


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = lowest[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = lowest[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    lowest[node] = min(lowest[node], index[successor])
            else:
                work.pop()
                if work:
                    lowest[work[-1][0]] = min(lowest[work[-1][0]], lowest[node])
                if lowest[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def test_the_cycle_finder_finds_a_circle_and_passes_a_chain():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_relative_lazy_and_package_imports():
    graph = import_graph()
    assert "captum_tokenlrp._adapters.base" in graph["captum_tokenlrp._adapters"]  # from .base import ...
    assert "captum_tokenlrp._adapters" in graph["captum_tokenlrp._core.capture"]  # from .._adapters import ...
    assert "captum_tokenlrp._adapters.text" in graph["captum_tokenlrp._loading.hints"]  # inside a function


def test_no_module_imports_one_that_imports_it_back():
    left = [sorted(circle) for circle in circles(import_graph()) if circle not in KNOWN_CIRCLES]
    assert left == [], f"import circles between modules: {left}"


def test_the_utilities_are_low_level():
    """``_utils`` holds helpers under everything else: no method, model, text engine or service layer."""
    graph = import_graph()
    names = "baselines models text _loading cli app report images visualization evaluation data diagnostics"
    above = tuple(f"captum_tokenlrp.{name}" for name in names.split())
    upward = {
        (module, imported)
        for module, imports in graph.items()
        if module.startswith("captum_tokenlrp._utils")
        for imported in imports
        if imported.startswith(above)
    }
    assert upward == set()
    assert "captum_tokenlrp._loading" in graph["captum_tokenlrp.cli._explain"]  # the check sees the service layer


def test_the_adapters_import_nothing_of_the_engine():
    """Model-structure knowledge is the bottom layer: rules, propagation and attribution read the adapters."""
    graph = import_graph()
    engine = ("captum_tokenlrp._core", "captum_tokenlrp.rules", "captum_tokenlrp.baselines", "captum_tokenlrp.text")
    upward = {
        (module, imported)
        for module, imports in graph.items()
        if module.startswith("captum_tokenlrp._adapters")
        for imported in imports
        if imported.startswith(engine)
    }
    assert upward == set()


def test_the_numerics_under_the_rules_are_leaves():
    """What both the rules and the engine use imports nothing of the package, so it closes no circle."""
    graph = import_graph()
    for leaf in ("_core.distances", "_core.workspace", "_utils.geometry", "_utils.stack"):
        assert graph[f"captum_tokenlrp.{leaf}"] == set(), leaf
    assert graph["captum_tokenlrp.rules"] == {"captum_tokenlrp._core.distances"}


def test_the_engine_workspace_is_not_part_of_the_public_state():
    """``LayerProjections.state`` hands out tensors of its own; reusable buffers are the engine's private path."""
    for method in (LayerProjections.state, LayerProjections.head_chunks, LayerProjections.blocks):
        assert "workspace" not in inspect.signature(method).parameters, method.__name__


def test_the_model_specific_baselines_ask_the_adapter_for_a_capability():
    """AttnLRP and TransformerAttribution read what the adapter states, not which class it is."""
    from captum_tokenlrp._adapters.base import registered_adapters

    graph = import_graph()
    for baseline in ("attnlrp", "transformer_attribution"):
        concrete = {
            imported
            for imported in graph[f"captum_tokenlrp.baselines.{baseline}"]
            if imported.startswith("captum_tokenlrp._adapters.") and imported != "captum_tokenlrp._adapters.base"
        }
        assert concrete == set(), baseline
    by_name = {adapter.__name__: adapter for adapter in registered_adapters()}
    pre_norm = {name for name, adapter in by_name.items() if adapter.pre_norm_blocks}
    assert pre_norm == {"ViTAdapter", "DeiTAdapter", "Dinov2Adapter", "Dinov2WithRegistersAdapter", "ViTMAEAdapter"}
    assert {name for name, adapter in by_name.items() if adapter.vit_layers} == {"ViTAdapter"}
