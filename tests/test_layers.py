"""The shape of the code: every import points down the layers of docs/development.md, no
module imports itself back through others, and no file or function outgrows a reading."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "otpsvc"

#: Bottom to top: a module may import its own layer and those below, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "requestcontext", "phones", "money"),
    ("logs", "telemetry", "metrics", "serving", "healthcheck"),
    ("store", "dev"),
    ("voice",),
    ("config",),
    ("core",),
    ("events",),
    ("api",),
    ("app", "listen"),
    ("cli", "__main__", "__init__"),
]
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_START_STEP_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name == "gunicorn.conf.py":
            continue  # gunicorn's settings file, not a module of the package
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(("otpsvc", *parts)).removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _room(module: str) -> str:
    """The top-level part of otpsvc a module belongs to (``core`` for ``otpsvc.core.start``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(module: str) -> int:
    room = _room(module)
    for index, rooms in enumerate(LAYERS):
        if room in rooms:
            return index
    raise AssertionError(f"{module}: {room} is in no layer of tests/test_layers.py")


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """The otpsvc modules ``path`` imports: every import (inside functions and type-checking
    blocks too), or only those run when the module loads."""
    tree = ast.parse(path.read_text())
    if top_level_only:
        nodes = [
            node
            for node in tree.body
            if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test))
        ]
    else:
        nodes = list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("otpsvc"):
            # ``from otpsvc import metrics`` imports the module metrics; ``from otpsvc.config
            # import Settings`` the package config.
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                names.add(name if name in MODULES else node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("otpsvc"))
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name not in modules:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def test_every_import_points_down_the_layers():
    modules = MODULES
    upward = []
    for module, path in modules.items():
        for name in _imports(path, top_level_only=False):
            target = _resolve(name, modules)
            if target and target != module and _layer(target) > _layer(module):
                upward.append(f"{module} imports {target}")
    assert not upward, sorted(set(upward))


def test_no_import_circle():
    """Between the parts of otpsvc (``config``, ``voice``, ``core``...), counting every import,
    type-only ones too; and between modules, counting what runs when a module loads."""
    modules = MODULES
    rooms: dict[str, set[str]] = {}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        for name in _imports(path, top_level_only=False):
            target = _resolve(name, modules)
            if target and _room(target) != _room(module):
                rooms.setdefault(_room(module), set()).add(_room(target))
        graph[module] = {
            target
            for name in _imports(path, top_level_only=True)
            if (target := _resolve(name, modules)) and target != module
        }
    assert not _circles(rooms), _circles(rooms)
    assert not _circles(graph), _circles(graph)


def _circles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    found: list[str] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_no_file_or_function_outgrows_a_reading():
    long_files, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.name} {node.name}: {length} lines")
    assert not long_files, long_files
    assert not long_functions, long_functions


def test_each_step_of_a_start_reads_in_one_sitting():
    tree = ast.parse((PACKAGE / "core" / "start.py").read_text())
    starting = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Starting")
    long_steps = [
        f"{node.name}: {(node.end_lineno or node.lineno) - node.lineno + 1} lines"
        for node in starting.body
        if isinstance(node, ast.FunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 >= MAX_START_STEP_LINES
    ]
    assert not long_steps, long_steps
