"""The package's layers hold (README.md, "Architecture: where things go"): every import inside
expstore points down, no modules import each other in a circle, and every function-level import
says why it waits."""

from __future__ import annotations

import ast
from pathlib import Path

from expstore.backends import BACKENDS, ArchiveForm, Backend

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "expstore"

# Bottom first. A module may import its own layer and the layers below it. The package's
# __init__ and the re-export modules of the old flat paths (expstore/sb3.py, ...) sit on top.
LAYERS = [
    ("expstore._version", "expstore.errors", "expstore.codecs", "expstore.schema"),
    ("expstore.backends",),
    ("expstore.sampling",),
    ("expstore.core",),
    ("expstore.mixing",),
    ("expstore.inspect",),
    ("expstore.maintenance",),
    ("expstore.interchange",),
    ("expstore.integrations",),
    ("expstore.training",),
    ("expstore.cli",),
]
TOP = len(LAYERS)
BLOCK_HEADERS = ("try:", "else:", "finally:")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return rank
    return TOP


def known(target: str) -> str | None:
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def imports(module: str) -> list[tuple[ast.stmt, str, set[str]]]:
    """(statement, the module it loads, the modules the import checker sees) for each import of
    the package, at any depth of the code."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]
            loads = [name if name in MODULES else base for name in names]
            seen = {known(name) for name in [base, *names]}
        elif isinstance(node, ast.Import):
            loads = [alias.name for alias in node.names]
            seen = {known(name) for name in loads}
        else:
            continue
        for target in {known(name) for name in loads} - {None, module}:
            found.append((node, target, seen - {None, module}))
    return found


def where(module: str, node: ast.stmt) -> str:
    return f"{MODULES[module].relative_to(PACKAGE_DIR.parent)}:{node.lineno}"


def test_every_import_points_down_the_layers():
    upward = [f"{where(module, node)}: {module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module in MODULES for node, target, _ in imports(module) if layer(target) > layer(module)]
    assert not upward, "imports pointing up the layers (README.md, Architecture):\n" + "\n".join(upward)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_modules_import_each_other_in_a_circle():
    # As the import checker sees them: `from . import x` also counts as importing the package.
    graph = {module: set().union(*[seen for _, _, seen in imports(module)]) for module in MODULES}
    assert not circles(graph)


def nested_imports(module: str) -> list[ast.stmt]:
    tree = ast.parse(MODULES[module].read_text())
    module_level = set()
    for statement in tree.body:  # imports in a module-level try/if (optional dependencies) are module level
        if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            module_level |= {id(node) for node in ast.walk(statement)}
    return [node for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in module_level]


def says_why(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's line, or above the run of imports it belongs to (a `try:`
    between them allowed)."""
    if "#" in lines[node.lineno - 1]:
        return True
    above = node.lineno - 2
    while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
        above -= 1
    while above >= 0 and (lines[above].strip() in BLOCK_HEADERS or lines[above].strip().startswith("if ")):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")


def test_function_level_imports_say_why_they_wait():
    silent = []
    for module, path in MODULES.items():
        lines = path.read_text().split("\n")
        silent += [f"{where(module, node)}: {lines[node.lineno - 1].strip()}"
                   for node in nested_imports(module) if not says_why(lines, node)]
    assert not silent, ("function-level imports without a comment saying why (move them to the top, "
                        "or say why they wait):\n" + "\n".join(silent))


def test_the_layer_table_names_every_folder_of_the_package():
    folders = {f"expstore.{path.name}" for path in PACKAGE_DIR.iterdir() if (path / "__init__.py").exists()}
    assert folders <= {prefix for prefixes in LAYERS for prefix in prefixes}


# Names that hold a Store in the modules above the core (``pool``, ``self._pool``, ``book.store``).
STORE_NAMES = {"pool", "_pool", "store", "_store", "source", "src", "dst", "destination", "reader", "shard_pool"}


def holds_a_store(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in STORE_NAMES
    return isinstance(node, ast.Attribute) and node.attr in STORE_NAMES


def private_reaches(module: str) -> list[str]:
    """``store._x`` in ``module``: a single-underscore attribute read or written on a name that
    holds a Store (dunders and a class's own ``self._x`` are not such reaches)."""
    tree = ast.parse(MODULES[module].read_text())
    return [f"{where(module, node)}: {ast.unparse(node)}" for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
            and holds_a_store(node.value)]


def test_no_module_above_the_core_reaches_into_a_stores_private_attributes():
    outside = [module for module in MODULES if layer(module) > layer("expstore.core")]
    reaches = [reach for module in outside for reach in private_reaches(module)]
    assert not reaches, ("private Store attributes used above the core; use the read-only surface at the end "
                         "of the Store class (expstore/core/store.py):\n" + "\n".join(reaches))


def test_the_private_reach_check_finds_a_reach():
    caught = ast.parse("pool._attach(pool._create(schema))\nself._pool._window()\nself._x = 1\nbook.store._maps")
    found = [ast.unparse(node) for node in ast.walk(caught)
             if isinstance(node, ast.Attribute) and node.attr.startswith("_") and holds_a_store(node.value)]
    assert sorted(found) == ["book.store._maps", "pool._attach", "pool._create", "self._pool._window"]


def test_every_registered_backend_implements_the_whole_backend_protocol():
    def members(protocol: type) -> set[str]:
        methods = {name for name, value in vars(protocol).items() if callable(value) and not name.startswith("_")}
        return methods | set(protocol.__annotations__)

    assert "disk_nbytes" in members(Backend) and "repair_container" in members(Backend)
    missing = {name: sorted(name_ for name_ in members(Backend) if not hasattr(backend, name_))
               for name, backend in BACKENDS.items()}
    missing.update({f"{name}.archive": sorted(m for m in members(ArchiveForm) if not hasattr(backend.archive, m))
                    for name, backend in BACKENDS.items()})
    assert not any(missing.values()), missing
