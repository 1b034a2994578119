"""The code's shape: no import cycles (lazy imports included), engine/ free of UI and storage libraries, one
decoding loop, and a builder registered for every strategy instead of a dispatch ladder."""

from __future__ import annotations

import ast
from pathlib import Path

from engine.builders import BUILDERS, build_decoder
from engine.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "specviz")


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imports_of(name: str, path: Path, is_package: bool, known: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it (module level, in functions, under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            candidates = [m for m in submodules if m in known]
            if len(candidates) < len(submodules):
                candidates.append(base)  # names defined in the module itself
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, is_package, set(known)) for name, (path, is_package) in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "engine.decoding.driver" in graph and graph["engine.decoding.chain"] >= {"engine.decoding.driver"}
    assert cycles(graph) == []


def test_the_engine_imports_no_ui_or_storage_library():
    banned = {"gradio", "plotly", "sqlite3", "sqlite_utils", "pandas", "specviz"}
    for name, (path, _) in modules().items():
        if not name.startswith("engine"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                roots = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if not node.level else [])
                assert not {r.split(".")[0] for r in roots} & banned, f"{name} imports {roots}"


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_the_decoding_loop_is_written_once():
    """Exactly one `while True` loop over steps in the decoding package: the driver's."""
    loops = [
        (path.name, fn.name)
        for path in (ROOT / "engine" / "decoding").glob("*.py")
        for fn in _functions(path)
        for node in ast.walk(fn)
        if isinstance(node, ast.While) and isinstance(node.test, ast.Constant) and node.test.value is True
        and any(isinstance(n, ast.Yield) for n in ast.walk(node))
    ]
    assert loops == [("driver.py", "_loop")]


def test_every_strategy_has_a_builder_and_build_decoder_has_no_ladder():
    assert set(BUILDERS) == set(STRATEGIES.values())
    source = ast.parse(Path(build_decoder.__code__.co_filename).read_text(encoding="utf-8"))
    body = next(fn for fn in _functions(Path(build_decoder.__code__.co_filename)) if fn.name == "build_decoder")
    assert source is not None
    calls = [n.func.id for n in ast.walk(body) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert "isinstance" not in calls


def test_no_function_in_engine_or_specviz_is_longer_than_80_lines():
    """Pure data tables excepted (none today)."""
    long = [
        f"{path.relative_to(ROOT)}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        for fn in _functions(path)
        if fn.end_lineno - fn.lineno + 1 > 80
    ]
    assert long == []


def test_the_engine_finds_the_repository_assets():
    from engine.loading.trained_drafters import assets_dir, drafters_dir

    assert assets_dir() == ROOT / "assets" and drafters_dir("smollm2-135m-instruct").is_dir()
