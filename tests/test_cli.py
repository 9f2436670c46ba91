"""The command line: help, info, edit, merge, one-line errors, optional command registration."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from instructedit import cli
from instructedit.cli.common import parse_patch_rank
from tests.cli_helpers import run_main

ROOT = Path(__file__).resolve().parents[1]
INFO_KEYS = {"model_id", "source", "family", "model_type", "parameters", "quantization", "dtype",
             "compute_dtype", "footprint_bytes", "device", "num_layers", "hidden_size", "vocab_size",
             "edited_modules"}
EDIT_KEYS = {"model_id", "quantization", "editor", "task", "instruction", "prompt", "target",
             "wrapped_input", "latency_ms", "continuation", "wrapped_continuation", "target_scores",
             "scores", "rephrases", "probes", "patch", "subject", "keyed_on_subject", "edit_schedule"}


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               OMP_NUM_THREADS="1")  # tiny models: threads only add spin-waiting on a busy machine
    return subprocess.run([sys.executable, "-m", "instructedit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_help_lists_commands():
    result = run_cli("--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("info", "edit", "merge"):
        assert command in result.stdout


def test_every_command_has_help(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"info", "edit", "merge"} <= set(subparsers.choices)
    for command in subparsers.choices:
        code, out, _ = run_main(capsys, command, "--help")
        assert code == 0 and "usage:" in out, command


def test_info_json_subprocess(tiny_llama_dir):
    result = run_cli("info", "--model", str(tiny_llama_dir), "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info) == INFO_KEYS
    assert info["family"] == "llama" and info["quantization"] == "none" and info["num_layers"] == 4
    assert info["footprint_bytes"] > 0 and len(info["edited_modules"]) == 9


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_info_quantized_and_table(capsys, tiny_gpt2_dir, quant):
    code, out, _ = run_main(capsys, "info", "--model", str(tiny_gpt2_dir), "--quant", quant, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["quantization"] == quant and info["family"] == "gpt2"
    code, table, _ = run_main(capsys, "info", "--model", str(tiny_gpt2_dir), "--quant", quant)
    assert code == 0
    assert f"quantization     {quant}" in table and "MiB" in table
    with pytest.raises(json.JSONDecodeError):
        json.loads(table)


def test_edit_json_subprocess(tiny_llama_dir):
    result = run_cli("edit", "--model", str(tiny_llama_dir), "--editor", "none", "--step-size", "1",
                     "--prompt", "The Eiffel Tower is located in", "--target", "Rome",
                     "--rephrase", "Where is the Eiffel Tower? It is in", "--probe", "Berlin is in",
                     "--max-new-tokens", "4", "--json", timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == EDIT_KEYS
    assert report["wrapped_input"] == "The Eiffel Tower is located in"  # custom task: no wrapping
    assert report["editor"] == "gradient-step(1)" and report["latency_ms"] > 0
    assert set(report["continuation"]) == {"pre", "post", "changed", "verdict"}
    scores = report["target_scores"]
    for key in ("wrapped", "raw"):
        assert set(scores[key]["pre"]) == {"probability", "token_accuracy"}
        assert scores[key]["post"]["probability"] > scores[key]["pre"]["probability"]
    assert [r["prompt"] for r in report["rephrases"]] == ["Where is the Eiffel Tower? It is in"]
    assert [p["prompt"] for p in report["probes"]] == ["Berlin is in"]
    for item in report["rephrases"] + report["probes"]:
        assert {"pre", "post", "changed", "verdict"} <= set(item)
        assert item["changed"] == (item["verdict"] != "same answer")  # the studio's verdict
    assert len(report["patch"]["modules"]) == 9
    assert report["patch"]["rank"] > 2  # a plain gradient step is kept at full rank


def test_edit_patch_rank_option(capsys, tiny_llama_dir):
    code, out, err = run_main(capsys, "edit", "--model", str(tiny_llama_dir), "--editor", "none",
                              "--step-size", "1", "--patch-rank", "2", "--prompt", "Rome is in",
                              "--target", "France", "--max-new-tokens", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["patch"]["rank"] == 2
    assert report["target_scores"]["raw"]["post"]["probability"] > \
        report["target_scores"]["raw"]["pre"]["probability"]
    assert parse_patch_rank("full") is None and parse_patch_rank("4") == 4


def test_edit_wraps_with_instruction(capsys, tiny_gpt2_dir):
    code, out, err = run_main(capsys, "edit", "--model", str(tiny_gpt2_dir), "--editor", "none",
                              "--task", "counterfact", "--instruction", "heldout",
                              "--prompt", "The Eiffel Tower is located in", "--target", "Rome",
                              "--rephrase", "The Eiffel Tower stands in", "--max-new-tokens", "2",
                              "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["wrapped_input"].startswith("Task: counterfact\nDescription: ")
    assert report["rephrases"][0]["wrapped"].endswith("Input: The Eiffel Tower stands in")
    assert report["target_scores"]["wrapped"]["post"]["probability"] > \
        report["target_scores"]["wrapped"]["pre"]["probability"]


def test_edit_bad_input_subprocess(tiny_llama_dir):
    result = run_cli("edit", "--model", str(tiny_llama_dir), "--editor", "none", "--prompt", "   ",
                     "--target", "Rome", "--json", timeout=120)
    assert result.returncode == 2
    assert _one_error_line(result.stderr) == "error: the prompt is empty: type some text"
    assert result.stdout == ""


@pytest.mark.parametrize("extra,match", [
    (["--prompt", "The capital\x01 is", "--target", "Rome"], "control characters"),
    (["--prompt", "x", "--target", "Rome", "--task", "nope"], "Unknown task"),
    (["--prompt", "x", "--target", "Rome", "--task", "counterfact", "--instruction", "12"], "out of range"),
    (["--prompt", "x", "--target", "Rome", "--rephrase", " "], "empty"),
    (["--prompt", "x", "--target", "Rome", "--step-size", "-1"], "step-size"),
    (["--prompt", "x", "--target", "Rome", "--max-new-tokens", "0"], "max-new-tokens"),
    (["--prompt", "x"], "required: --target"),
    (["--prompt", "x", "--target", "y", "--quant", "3bit"], "invalid choice"),
    (["--prompt", "x", "--target", "y", "--patch-rank", "0"], "at least 1"),
    (["--prompt", "x", "--target", "y", "--patch-rank", "many"], "positive integer or 'full'"),
])
def test_edit_errors_are_one_line_exit_2(capsys, tiny_llama_dir, extra, match):
    code, out, err = run_main(capsys, "edit", "--model", str(tiny_llama_dir), "--editor", "none", *extra)
    assert code == 2
    assert match in _one_error_line(err)
    assert out == ""


def test_bad_model_and_editor_are_one_line_exit_2(capsys, tiny_llama_dir, tmp_path):
    code, _, err = run_main(capsys, "info", "--model", str(tmp_path / "missing-model"))
    assert code == 2 and "does not exist" in _one_error_line(err)
    code, _, err = run_main(capsys, "edit", "--model", str(tiny_llama_dir), "--editor",
                            str(tmp_path / "no-editor"), "--prompt", "x", "--target", "y")
    assert code == 2 and "no-editor" in _one_error_line(err)


def test_merge_command(capsys, tiny_gpt2_dir, tmp_path):
    out_dir = tmp_path / "edited"
    args = ["merge", "--model", str(tiny_gpt2_dir), "--editor", "none", "--step-size", "1",
            "--prompt", "Rome is in", "--target", "Germany", "--out", str(out_dir), "--json"]
    code, out, err = run_main(capsys, *args)
    assert code == 0, err
    result = json.loads(out)
    assert Path(result["out"]) == out_dir and (out_dir / "config.json").is_file()
    marker = json.loads((out_dir / "instructedit-model.json").read_text())
    assert marker["edits"][0]["target"] == "Germany"
    code, _, err = run_main(capsys, *args)
    assert code == 2 and "already exists" in _one_error_line(err)
    code, _, err = run_main(capsys, *args, "--overwrite")
    assert code == 0, err


def test_command_modules_are_imported_explicitly(monkeypatch, tmp_path):
    """Every command module of ``instructedit/cli/`` is imported by name at the top of the entry
    point (no import by string: a missing module is an ImportError, never a missing command) and
    registered, and a registration appended to REGISTRARS becomes a command."""
    import ast

    package = ROOT / "instructedit" / "cli"
    tree = ast.parse((package / "__init__.py").read_text())
    imported = {alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1
                and node.module is None for alias in node.names}
    commands = {p.stem for p in package.glob("*.py")} - {"__init__", "common", "fields"}
    assert imported == commands
    assert "importlib" not in {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                               for alias in node.names}
    assert {r.__module__ for r in cli.REGISTRARS} == {f"instructedit.cli.{name}" for name in commands}

    pkg = tmp_path / "fake_cli_plugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(textwrap.dedent("""
        def register(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.set_defaults(func=lambda args: print("hello") or 0)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from fake_cli_plugins.good import register

    monkeypatch.setattr(cli, "REGISTRARS", [*cli.REGISTRARS, register])
    parser = cli.build_parser()
    assert parser.parse_args(["hello"]).func is not None
    assert cli.main(["hello"]) == 0


def test_help_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys; from instructedit import cli; cli.build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_real_model_info_and_edit():
    result = run_cli("info", "--model", "smollm2-135m", "--quant", "4bit", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["quantization"] == "4bit" and info["family"] == "llama"
    result = run_cli("edit", "--model", "smollm2-135m", "--editor", "none", "--step-size", "0.03",
                     "--prompt", "The Eiffel Tower is located in", "--target", "Rome", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["continuation"]["post"].startswith(" Rome"), report["continuation"]
    assert not report["continuation"]["pre"].startswith(" Rome")
