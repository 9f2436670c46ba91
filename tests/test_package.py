"""The installable package: top-level API, dependency pins, console script, package contents."""
from __future__ import annotations

import fnmatch
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "instructedit"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(name: str) -> list[str]:
    """The requirement lines of a requirements file (comments and blank lines dropped)."""
    lines = (ROOT / name).read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]


def test_library_api_is_importable_from_the_package_top():
    from instructedit import Editor, EditRequest, PatchEngine, generate, load_backbone
    from instructedit.editing.editor import Editor as RealEditor
    from instructedit.editing.editor import EditRequest as RealEditRequest
    from instructedit.editing.patches import PatchEngine as RealPatchEngine
    from instructedit.model.backbone import load_backbone as real_load_backbone
    from instructedit.model.generation import generate as real_generate

    assert (load_backbone, Editor, EditRequest, PatchEngine, generate) == (
        real_load_backbone, RealEditor, RealEditRequest, RealPatchEngine, real_generate)
    import instructedit

    assert {"load_backbone", "Editor", "EditRequest", "PatchEngine", "generate"} <= set(instructedit.__all__)
    assert set(instructedit.__all__) <= set(dir(instructedit))
    with pytest.raises(AttributeError):
        instructedit.no_such_name  # noqa: B018


def test_importing_the_package_does_not_import_torch():
    code = "import sys, instructedit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_dependency_pins_equal_requirements_txt():
    project = pyproject()["project"]
    assert project["dependencies"] == requirement_lines("requirements.txt")
    extras = project["optional-dependencies"]
    assert extras["dev"] == requirement_lines("requirements-dev.txt")
    assert extras["browser"] == requirement_lines("requirements-browser.txt")
    assert "torch==2.13.0" in project["dependencies"]  # a looser pin pulls a CUDA build


def test_console_script_resolves_to_the_cli_entry_point(capsys):
    scripts = pyproject()["project"]["scripts"]
    assert scripts == {"instructedit": "instructedit.cli:main"}
    main = EntryPoint("instructedit", scripts["instructedit"], "console_scripts").load()
    from instructedit.cli import main as cli_main

    assert callable(main) and main is cli_main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "data" in capsys.readouterr().out


def test_every_subpackage_and_asset_goes_into_the_wheel():
    config = pyproject()["tool"]["setuptools"]
    assert config["packages"]["find"]["include"] == ["instructedit*"]
    # setuptools' find only sees folders with an __init__.py: every folder holding code needs one
    for folder in [PACKAGE, *(p for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        if any(folder.glob("*.py")):
            assert (folder / "__init__.py").is_file(), f"{folder} is not a package"
    # the data files the library reads are package data
    patterns = config["package-data"]["instructedit"]
    data_files = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert data_files, "the package ships its assets"
    for rel in data_files:
        assert any(fnmatch.fnmatchcase(rel, pattern) for pattern in patterns), rel
    from instructedit.data.examples import DEFAULT_PATH as EXAMPLES
    from instructedit.data.sentiment import DEFAULT_PATH as LEXICON

    assert EXAMPLES.is_relative_to(PACKAGE) and LEXICON.is_relative_to(PACKAGE)
