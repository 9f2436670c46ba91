"""The layers of docs/architecture.md and their one-way rules, checked on the source (imports at any
depth of a file, lazy ones included), so that the map and the code cannot drift apart."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "instructedit"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # bottom up: a unit (a module or a subpackage of instructedit) imports only from its own layer
    # or the layers below it (same-layer imports: see SAME_LAYER)
    ("ground", ("defaults", "errors", "io_utils", "logs", "instructions", "data")),
    ("scoring", ("scoring",)),
    ("model", ("model",)),
    ("editing", ("editing",)),
    ("serving", ("serving",)),  # cross-session batching of generation, each row under its own edits
    ("measure", ("measuring", "tracing")),
    ("api", ("__init__",)),  # the package top: lazy re-exports of the model and editing layers
    ("workflows", ("train", "evaluate", "bench")),
    ("faces", ("cli", "web", "__main__")),
)
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
LAYER_OF = {unit: layer for layer, units in LAYERS for unit in units}
GROUND = dict(LAYERS)["ground"]
SAME_LAYER = {
    # the ground's modules build on one another (acyclic: see the cycle tests)
    *((a, b) for a in GROUND for b in GROUND),
    ("bench", "evaluate"), ("bench", "train"),  # the benchmarks time the evaluator and the trainer
    ("__main__", "cli"),                        # python -m instructedit runs the command line
}
FACES = ("instructedit.cli", "instructedit.web", "instructedit.__main__", "gradio", "argparse")
WORKFLOWS = ("instructedit.train", "instructedit.evaluate", "instructedit.bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(path: Path, node: ast.AST) -> set[str]:
    """Absolute names an import node names: the module, and ``module.name`` for every name."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:
        package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
        base = package.split(".")
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return {target} | {f"{target}.{alias.name}" for alias in node.names}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {t for node in ast.walk(tree) for t in _targets(path, node)}


def lazy_imports(path: Path) -> set[str]:
    """The names imported inside a function of ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return {t for func in ast.walk(tree) if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(func) for t in _targets(path, node)}


def package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def files(*names: str) -> list[Path]:
    out = []
    for name in names:
        folder = PACKAGE / name
        out += sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]
    return out


def unit(name: str) -> str | None:
    """The unit of ``instructedit`` that a module or imported name belongs to (None: not ours)."""
    parts = name.split(".")
    if parts[0] != "instructedit":
        return None
    if len(parts) == 1 or parts[1] not in RANK:
        return "__init__"  # the package itself, or a name it defines (__version__)
    return parts[1]


def edges() -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between two units."""
    out = set()
    for path in package_files():
        own = unit(module_name(path)) if path.name != "__main__.py" else "__main__"
        for target in imports(path):
            other = unit(target)
            if other is not None and other != own:
                out.add((own, other, f"{path.relative_to(PACKAGE.parent)} imports {target}"))
    return out


def offenders(paths, forbidden, allowed=lambda path: False) -> list[str]:
    bad = []
    for path in paths:
        if allowed(path):
            continue
        for target in imports(path):
            if any(target == f or target.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {target}")
    return sorted(set(bad))


def test_every_module_sits_in_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file()}
    assert tops == set(RANK), "a new module or package needs its place in LAYERS (and in the map)"
    assert not (PACKAGE / "stress.py").exists()  # the stress tool lives outside: tests/stress.py


def test_imports_go_down_the_layers():
    bad = [where for own, other, where in edges()
           if RANK[other] > RANK[own] or (RANK[other] == RANK[own] and (own, other) not in SAME_LAYER)]
    assert sorted(bad) == []


def test_no_workflow_library_or_ground_module_imports_a_face():
    below_faces = [p for p in package_files() if unit(module_name(p)) not in ("cli", "web")
                   and p.name != "__main__.py"]
    assert offenders(below_faces, FACES) == []
    library = files(*(u for u in RANK if RANK[u] < RANK["train"] and u != "__init__"))
    assert offenders(library, WORKFLOWS) == []


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` (empty when it has none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_import_cycles_between_layer_packages():
    graph: dict[str, set[str]] = {}
    for own, other, _ in edges():
        graph.setdefault(own, set()).add(other)
    assert _cycle(graph) == []


def test_no_import_cycles_between_modules():
    """Lazy imports included: no module needs a function-level import to break a cycle."""
    modules = {module_name(p): p for p in package_files()}

    def known(name: str) -> str:
        parts = name.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        return ".".join(parts)

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = _targets(path, node)
            if isinstance(node, ast.ImportFrom):
                # ``from package import module`` imports the module (the package is only its parent)
                base = min(targets, key=len)
                targets = {t if t in modules else base for t in targets - {base}}
            for target in filter(None, map(known, targets)):
                if target != name:
                    graph.setdefault(name, set()).add(target)
    assert _cycle(graph) == []


def test_imports_sit_at_the_module_top_except_in_the_command_line():
    """The command line imports the model, editing and workflow code inside its command functions,
    so that ``--help`` stays fast (tests/test_cli.py: it loads no torch); everywhere else the
    package's own imports sit at the module top (third-party libraries used by one function, such
    as matplotlib behind its Agg backend, may still be imported there)."""
    bad = [f"{p.relative_to(PACKAGE.parent)} imports {t} in a function"
           for p in package_files() if unit(module_name(p)) != "cli"
           for t in lazy_imports(p) if unit(t) is not None]
    assert sorted(bad) == []


def test_gradio_only_in_the_web_page():
    outside = [p for p in package_files() if p != PACKAGE / "web" / "app.py"]
    assert offenders(outside, ("gradio",)) == []


def test_argparse_only_in_the_command_line():
    outside = [p for p in package_files() if unit(module_name(p)) != "cli"]
    assert offenders(outside, ("argparse",)) == []


def test_data_knows_nothing_of_models_or_editors():
    allowed = tuple(f"instructedit.{name}" for name in GROUND)
    bad = [f"{path.name} imports {target}" for path in files("data") for target in imports(path)
           if target.startswith("instructedit") and not target.startswith(allowed)]
    assert bad == []


def test_only_patches_and_adapters_install_hooks():
    hooking = sorted(str(p.relative_to(PACKAGE)) for p in package_files()
                     if "register_forward" in p.read_text())
    assert hooking == ["editing/patches.py", "model/adapters.py"]


def test_the_checker_sees_lazy_and_relative_imports():
    assert "torch" in imports(PACKAGE / "editing" / "patches.py")
    edit = PACKAGE / "cli" / "edit.py"
    assert "instructedit.measuring.single" in imports(edit)  # relative and lazy
    assert "instructedit.measuring.single" in lazy_imports(edit)
    assert "instructedit.cli.common" not in lazy_imports(edit)  # at the top
    assert ("cli", "measuring") in {(own, other) for own, other, _ in edges()}


def test_every_expected_error_is_one_user_facing_type():
    from instructedit.cli.common import CliError
    from instructedit.data.records import RecordError
    from instructedit.data.tasks import SplitError
    from instructedit.editing.checkpoint import CheckpointError
    from instructedit.editing.editor import EditError
    from instructedit.editing.patches import NonFiniteEditError
    from instructedit.editing.rome import SubjectError
    from instructedit.errors import UserFacingError, sentence
    from instructedit.instructions import InstructionError
    from instructedit.model.adapters import UnsupportedArchitectureError
    from instructedit.model.backbone import BackboneError
    from instructedit.web.errors import UserError

    for kind in (UnsupportedArchitectureError, BackboneError, CheckpointError, CliError, RecordError,
                 SplitError, EditError, InstructionError, NonFiniteEditError, SubjectError, UserError):
        assert issubclass(kind, UserFacingError), kind
    assert sentence("  the prompt is\nempty ") == "The prompt is empty."
    assert sentence("") == "The request could not be carried out."
