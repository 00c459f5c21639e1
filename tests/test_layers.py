"""The import layers of eelsgpu (issue 10): every import points down the layers and no module
imports itself back through others, counting imports inside functions; kernels touch no files,
dask or xarray.

Read from the source with ``ast`` (nothing is imported), so an import inside a function counts
like one at the top of the module. Layers, top to bottom (a module may import its own layer,
without cycles, and the layers below):

=========  ===================================================================================
cli        ``eelsgpu.cli``, ``eelsgpu.__main__``
top        ``eelsgpu`` (the lazy public names), ``batch``, ``report``, ``plotting``
analysis   ``eelsgpu.analysis``, ``synthetic``, ``interop``
io         ``eelsgpu.io``
engine     ``eelsgpu.engine``
model      ``eelsgpu.model``
kernels    ``eelsgpu.kernels``
bottom     ``eelsgpu._xp``, ``physics``, ``errors``, ``_version``
=========  ===================================================================================
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eelsgpu"

#: Layers from the top down; a module belongs to the layer of the longest prefix naming it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("eelsgpu.cli", "eelsgpu.__main__")),
    ("top", ("eelsgpu", "eelsgpu.batch", "eelsgpu.report", "eelsgpu.plotting")),
    (
        "analysis",
        (
            "eelsgpu.analysis",
            "eelsgpu.synthetic",
            "eelsgpu.interop",
        ),
    ),
    ("io", ("eelsgpu.io",)),
    ("engine", ("eelsgpu.engine",)),
    ("model", ("eelsgpu.model",)),
    ("kernels", ("eelsgpu.kernels",)),
    (
        "bottom",
        (
            "eelsgpu._xp",
            "eelsgpu.physics",
            "eelsgpu.errors",
            "eelsgpu._version",
        ),
    ),
]

#: What a kernel module never imports: arrays in, arrays out, no dask, xarray or files.
KERNEL_FORBIDDEN = {
    "dask",
    "distributed",
    "xarray",
    "zarr",
    "numcodecs",
    "h5py",
    "rsciio",
    "hyperspy",
    "exspy",
    "matplotlib",
    "os",
    "pathlib",
    "shutil",
    "tempfile",
    "glob",
    "io",
    "pickle",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module ``name`` imports (absolute names, eelsgpu's resolved to the module that is
    imported), with the line, wherever the import statement sits."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


def _graph() -> dict[str, set[str]]:
    """eelsgpu's modules -> the eelsgpu modules each imports."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for target, _ in _imports(name, path):
            while target and target not in MODULES and "." in target:
                target = target.rpartition(".")[0]  # eelsgpu.x.attr -> eelsgpu.x
            if target in MODULES and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _layer(name: str) -> int:
    best, index = "", -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # "eelsgpu" itself is the package's __init__ only, not everything below it
            inside = prefix != "eelsgpu" and name.startswith(prefix + ".")
            if (name == prefix or inside) and len(prefix) > len(best):
                best, index = prefix, i
    return index


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    """A new module must be placed in LAYERS (so the rule covers it)."""
    missing = [name for name in MODULES if _layer(name) < 0]
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_imports_point_down_the_layers():
    """No module imports one of a higher layer (imports inside functions included)."""
    graph = _graph()
    upward = sorted(
        (a, b) for a, targets in graph.items() for b in targets if _layer(b) < _layer(a)
    )
    new = [f"{a} ({LAYERS[_layer(a)][0]}) imports {b} ({LAYERS[_layer(b)][0]})" for a, b in upward]
    assert not new, "imports pointing up the layers:\n" + "\n".join(new)


def test_no_import_cycles():
    """No module imports itself back through others (imports inside functions included)."""
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles: {[sorted(c) for c in cycles]}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) == 6))
def test_kernels_import_no_io_dask_or_xarray(name):
    """Kernel modules are pure functions of arrays and floats: no dask, xarray, zarr, files."""
    bad = sorted(
        {
            f"{target} (line {line})"
            for target, line in _imports(name, MODULES[name])
            if target.split(".")[0] in KERNEL_FORBIDDEN
        }
    )
    assert not bad, f"{name} imports {bad}"
    tree = ast.parse(MODULES[name].read_text())
    opens = [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "open"
    ]
    assert not opens, f"{name} opens files (lines {opens})"


def test_the_checks_see_what_they_check():
    """The reading of imports itself: an import inside a function counts, relative imports
    resolve, and a made-up cycle is found."""
    imports = dict(_imports("eelsgpu.engine.store", MODULES["eelsgpu.engine.store"]))
    assert "eelsgpu.engine.blocks" in imports and "zarr" in imports  # zarr: inside a function
    assert _layer("eelsgpu.engine.store") == 4 and _layer("eelsgpu.kernels.declare") == 6
    assert LAYERS[6][0] == "kernels"
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
