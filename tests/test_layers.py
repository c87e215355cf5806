"""One-way layers (docs/architecture.md): the import graph of ``benchmark/``, built from the source (every
``import``, at module level and inside functions), has no cycle and no edge from a lower layer to a higher
one, apart from the documented exceptions below (which must still exist, so the list stays true)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "benchmark"

#: Layers from the bottom up; a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "benchmark.errors",
            "benchmark.registry",
            "benchmark.types",
            "benchmark.schema",
            "benchmark.outdir",
            "benchmark.seeding",
            "benchmark.cpukernels",
            "benchmark.forward",
            "benchmark.progress",
            "benchmark.methods.capture",
            "benchmark.methods.postprocess",
        ),
    ),
    ("components", ("benchmark", "benchmark.methods", "benchmark.metrics", "benchmark.models", "benchmark.data")),
    ("extension", ("benchmark.plugins",)),
    ("evaluate", ("benchmark.evaluate",)),
    ("store", ("benchmark.store",)),
    ("runner", ("benchmark.runner",)),
    ("report", ("benchmark.report",)),
    ("cli", ("benchmark.cli",)),
]

#: Cycles that remain, each to be removed (then delete its entry: the test fails on a stale entry).
ALLOWED_CYCLES: dict[frozenset[str], str] = {}

#: Edges from a lower layer to a higher one that remain, each to be removed.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

_FAST = "keeps torch (and pandas) out of a path that must start fast without them"
_HEAVY = "an optional or heavy dependency (matplotlib, the HTML renderer)"
_TODO = "to be moved to module level (report owners)"
#: Function-level imports of cambench's own modules (``(importer, imported)``): only for optional or heavy
#: dependencies, each with its reason. The test fails on any other, and on a stale entry.
ALLOWED_FUNCTION_IMPORTS: dict[tuple[str, str], str] = {
    ("benchmark.cli", "benchmark.runner"): _FAST,
    ("benchmark.cli", "benchmark.report.build"): _FAST,
    ("benchmark.cli", "benchmark.report.compare"): _FAST,
    ("benchmark.cli", "benchmark.methods"): _FAST,
    ("benchmark.cli", "benchmark.metrics"): _FAST,
    ("benchmark.cli", "benchmark.models"): _FAST,
    ("benchmark.cli", "benchmark.models.shipped"): _FAST,
    ("benchmark.cli", "benchmark.data"): _FAST,
    ("benchmark.runner.suite", "benchmark.methods.msflip"): _FAST + " (parsing a suite file)",
    ("benchmark.report.build", "benchmark.report.plots"): _HEAVY,
    ("benchmark.report.build", "benchmark.report.html"): _HEAVY,
    ("benchmark.report.build", "benchmark.methods"): _TODO,
    ("benchmark.report.build", "benchmark.metrics"): _TODO,
    ("benchmark.report.build", "benchmark.report.card"): _TODO,
    ("benchmark.report.build", "benchmark.report.seeds"): _TODO,
    ("benchmark.report.build", "benchmark.report.meta"): _TODO,
    ("benchmark.report.build", "benchmark.runner.plan"): _TODO + " (results are data: integrity, #23 item 5)",
    ("benchmark.report.card", "benchmark.report.meta"): _TODO,
    ("benchmark.report.tables", "benchmark.metrics.base"): _TODO,
}

#: The longest function (lines, ``def`` to its last line) allowed in ``benchmark/runner/``: one screen.
RUNNER_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known: set[str]) -> list[str]:
    """The cambench modules an import statement of module ``name`` loads (``from x import y``: ``x.y`` when
    it is a module, else ``x``)."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        package = name.split(".") if is_package else name.split(".")[:-1]
        base = package[: len(package) - node.level + 1] if node.level else []
        prefix = ".".join(base + ([node.module] if node.module else []))
        targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    out = []
    for t in targets:
        if t.split(".")[0] != "benchmark":
            continue
        while t not in known and "." in t:  # ``import benchmark.x.attr`` -> the module that defines it
            t = t.rsplit(".", 1)[0]
        out.append(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(t for t in imported(node, name, path.name == "__init__.py", known) if t != name)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Tarjan's algorithm (iterative): the components with more than one module, i.e. the cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    x = stack.pop()
                    on_stack.discard(x)
                    comp.add(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


def layer_of(module: str) -> int:
    best, level = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            matches = module == p or (p != "benchmark" and module.startswith(p + "."))
            if matches and len(p) > best:
                best, level = len(p), i
    return level


def test_graph_sees_every_kind_of_import() -> None:
    """The graph builder itself: relative, absolute, package-level and function-level imports."""
    graph = import_graph()
    assert "benchmark.methods.base" in graph["benchmark.methods.gradient"]  # from .base import ...
    assert "benchmark.errors" in graph["benchmark.registry"]  # from .errors import ...
    assert "benchmark.methods" in graph["benchmark.plugins"]  # from .methods import METHODS
    assert "benchmark.plugins" in graph["benchmark.runner.plan"]  # inside a function
    assert "benchmark.schema" in graph["benchmark.store"]


def test_metrics_read_method_facts_from_their_context() -> None:
    """Robustness and sanity metrics get method metadata through ``MetricContext.method_meta`` (filled by the
    runner), not from the METHODS registry."""
    graph = import_graph()
    for m in ("benchmark.metrics.robustness", "benchmark.metrics.sanity"):
        assert not {d for d in graph[m] if d == "benchmark.methods" or d.startswith("benchmark.methods.")}, m


def test_runner_parts_point_down() -> None:
    """Inside the runner: resources <- plan <- unit <- driver <- execute (the re-export module), never back up."""
    graph = import_graph()
    order = [
        "benchmark.runner.resources",
        "benchmark.runner.plan",
        "benchmark.runner.unit",
        "benchmark.runner.driver",
        "benchmark.runner.execute",
    ]
    for i, m in enumerate(order):
        assert not graph[m] & set(order[i + 1 :]), (m, graph[m] & set(order[i + 1 :]))
    assert "benchmark.runner.execute" not in set().union(*(graph[m] for m in graph if m != "benchmark.runner"))


def function_level_imports() -> set[tuple[str, str]]:
    """``(importer, imported)`` for every import of a cambench module inside a function or method."""
    mods = modules()
    known = set(mods)
    out: set[tuple[str, str]] = set()
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    is_pkg = path.name == "__init__.py"
                    out.update((name, t) for t in imported(node, name, is_pkg, known) if t != name)
    return out


def test_function_level_imports_only_for_heavy_dependencies() -> None:
    """docs/architecture.md: a function-level import of cambench's own code hides the real dependency graph;
    only the listed ones (optional or heavy dependencies, each with its reason) remain."""
    found = function_level_imports()
    new = sorted(found - set(ALLOWED_FUNCTION_IMPORTS))
    assert not new, (
        f"Function-level imports of cambench modules: {new}. Import them at module level (move a shared "
        "piece down a layer if that makes a cycle); only optional or heavy dependencies stay inside functions, "
        "listed in ALLOWED_FUNCTION_IMPORTS with the reason."
    )
    gone = sorted(set(ALLOWED_FUNCTION_IMPORTS) - found)
    assert not gone, f"Stale entries in ALLOWED_FUNCTION_IMPORTS: {gone}; remove them from the list."


def test_function_level_import_finder_sees_one() -> None:
    assert ("benchmark.runner.suite", "benchmark.methods.msflip") in function_level_imports()


def test_runner_functions_fit_on_one_screen() -> None:
    """No function in ``benchmark/runner/`` is longer than RUNNER_FUNCTION_LINES (docs/architecture.md)."""
    long = []
    for path in sorted((ROOT / "runner").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > RUNNER_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({n} lines)")
    assert not long, f"Functions over {RUNNER_FUNCTION_LINES} lines in benchmark/runner/: {long}; split them."


def test_registered_names_are_the_function_names() -> None:
    """One name per concept: each built-in method and metric is registered under its function's name (a name
    registered on a shared function, or a bridge, says so with ``defaults=``/``source=``)."""
    import benchmark.methods
    import benchmark.metrics

    differ = [
        f"{reg.kind} {name!r} is function {entry.obj.__module__}.{entry.obj.__name__}"
        for reg in (benchmark.methods.METHODS, benchmark.metrics.METRICS)
        for name in reg.list()
        for entry in [reg.entry(name)]
        if entry.meta.get("source", "cambench") == "cambench" and getattr(entry.obj, "__name__", name) != name
    ]
    assert not differ, differ


def test_cycle_finder_finds_cycles() -> None:
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(g) == [frozenset("abc")]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_every_module_has_a_layer() -> None:
    unplaced = [m for m in modules() if layer_of(m) < 0]
    assert not unplaced, f"Add these modules to LAYERS in tests/test_layers.py and docs/architecture.md: {unplaced}"


def test_no_import_cycle() -> None:
    cycles = strongly_connected(import_graph())
    new = [sorted(c) for c in cycles if c not in ALLOWED_CYCLES]
    assert not new, (
        f"Import cycle(s) in benchmark/: {new}. Move the shared piece down a layer (docs/architecture.md) "
        "instead of hiding the import inside a function."
    )
    gone = [sorted(c) for c in ALLOWED_CYCLES if c not in cycles]
    assert not gone, f"Fixed cycle(s) still listed in ALLOWED_CYCLES: {gone}; remove them from the list."


def test_no_upward_import() -> None:
    graph = import_graph()
    upward = {(a, b) for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a)}
    new = sorted(upward - set(ALLOWED_UPWARD))
    shown = [f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})" for a, b in new]
    assert not shown, f"Lower layers import higher ones: {shown} (docs/architecture.md)."
    gone = sorted(set(ALLOWED_UPWARD) - upward)
    assert not gone, f"Fixed edge(s) still listed in ALLOWED_UPWARD: {gone}; remove them from the list."


def test_store_and_report_do_not_load_the_runner() -> None:
    """At run time too (one fresh interpreter): importing the store and the report loads no runner module."""
    code = "import sys, benchmark.store, benchmark.report.build; "
    code += "print(sorted(m for m in sys.modules if m.startswith('benchmark.runner')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent
    ).stdout.strip()
    assert out == "[]"
