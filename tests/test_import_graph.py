"""The package's imports form no circle: neither at module level (each module can be imported
first) nor through imports inside functions (a lower layer reaching back up at call time)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "lightning_ssl_backdoor"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):  # module level and inside functions
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a package's own parents are not edges
                    graph[name].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert not _cycles(_graph())


def test_the_checker_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# Layers point one way (docs/architecture.md): data/ is below attacks/, defenses/, ssl/ and pipeline/.
_ABOVE_DATA = ("attacks", "defenses", "ssl", "pipeline", "report", "cli")


def test_data_never_imports_a_higher_layer():
    pkg = PKG.name
    bad = {
        (src, dst)
        for src, dsts in _graph().items() if src == f"{pkg}.data" or src.startswith(f"{pkg}.data.")
        for dst in dsts if any(dst == f"{pkg}.{up}" or dst.startswith(f"{pkg}.{up}.") for up in _ABOVE_DATA)
    }
    assert not bad, f"data/ imports a higher layer: {sorted(bad)}"


def test_attacks_io_re_exports_the_data_artifact_io():
    from lightning_ssl_backdoor.attacks import io as old
    from lightning_ssl_backdoor.data import poisoned_io as new

    for name in ("save_poisoned_split", "load_poisoned_split", "artifact_meta", "FORMAT", "VERSION"):
        assert getattr(old, name) is getattr(new, name)
