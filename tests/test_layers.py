"""The one-way rules of docs/architecture.md, checked on the source (imports, lazy ones included)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "instructedit"

CORE_AND_GROUND = (
    "adapters", "backbone", "checkpoint", "defaults", "editor", "editors", "errors", "generation",
    "instructions", "io_utils", "keying", "logs", "measuring", "mend", "merge", "patches",
    "preconditioning", "rome", "scoring", "tracing", "data",
)
FACES = ("instructedit.ui", "instructedit.cli", "instructedit.tracing_cli", "gradio", "argparse")
WORKFLOWS = ("instructedit.train", "instructedit.evaluate", "instructedit.bench",
             "instructedit.analysis")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, at any depth of the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def files(*names: str) -> list[Path]:
    out = []
    for name in names:
        folder = PACKAGE / name
        out += sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{name}.py"]
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


def test_core_and_ground_never_import_a_face_or_a_workflow():
    is_cli = lambda path: path.name == "cli.py"  # noqa: E731  (data/cli.py is the data face)
    assert offenders(files(*CORE_AND_GROUND), FACES + WORKFLOWS, is_cli) == []


def test_gradio_only_in_the_web_face():
    outside = [p for p in PACKAGE.rglob("*.py") if "ui" not in p.relative_to(PACKAGE).parts[:1]]
    assert offenders(outside, ("gradio",)) == []


def test_data_knows_nothing_of_models_or_editors():
    allowed_roots = ("instructedit.data", "instructedit.defaults", "instructedit.errors",
                     "instructedit.instructions", "instructedit.io_utils",
                     "instructedit.logs")
    bad = []
    for path in files("data"):
        for target in imports(path):
            if target.startswith("instructedit") and not target.startswith(allowed_roots) \
                    and path.name != "cli.py":
                bad.append(f"{path.name} imports {target}")
    assert bad == []


def test_only_patches_and_adapters_install_hooks():
    hooking = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                     if "register_forward" in p.read_text())
    assert hooking == ["adapters.py", "patches.py"]


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    probe = PACKAGE / "patches.py"
    assert "torch" in imports(probe)
    assert "instructedit.rome.key_covariance" in imports(PACKAGE / "preconditioning.py")  # lazy


def test_every_expected_error_is_one_user_facing_type():
    from instructedit.adapters import UnsupportedArchitectureError
    from instructedit.backbone import BackboneError
    from instructedit.checkpoint import CheckpointError
    from instructedit.cli import CliError
    from instructedit.data.records import RecordError
    from instructedit.data.tasks import SplitError
    from instructedit.editor import EditError
    from instructedit.errors import UserFacingError, sentence
    from instructedit.instructions import InstructionError
    from instructedit.patches import NonFiniteEditError
    from instructedit.rome import SubjectError
    from instructedit.ui.errors import UserError

    for kind in (UnsupportedArchitectureError, BackboneError, CheckpointError, CliError, RecordError,
                 SplitError, EditError, InstructionError, NonFiniteEditError, SubjectError, UserError):
        assert issubclass(kind, UserFacingError), kind
    assert sentence("  the prompt is\nempty ") == "The prompt is empty."
    assert sentence("") == "The request could not be carried out."
