"""Editor checkpoints: round trip, refusing other backbones, damaged files, no code execution."""
from __future__ import annotations

import ast
import inspect
import json
import pickle
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import instructedit.editing.checkpoint as checkpoint_module
from instructedit.editing.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from instructedit.editing.editor import Editor, EditRequest
from instructedit.model.backbone import load_backbone

REQUEST = EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact", instruction=3)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


@pytest.fixture(scope="module")
def trained_like_editor(llama):
    """An editor whose network is not the identity (random residual weights, normalisation on)."""
    torch.manual_seed(0)
    editor = Editor.untrained(llama, step_size=0.1, normalize=True)
    with torch.no_grad():
        for name, param in editor.network.named_parameters():
            if name.endswith("up.weight"):
                param.normal_(0, 0.05)
            elif "log_lr" in name:
                param.add_(torch.linspace(-0.5, 0.5, param.numel()))
        for transform in editor.network.transforms.values():
            transform.norm.update(torch.randn(4096, transform.in_dim + transform.out_dim))
    return editor


@pytest.fixture
def saved(trained_like_editor, tmp_path):
    folder = tmp_path / "editor"
    trained_like_editor.save_pretrained(folder, provenance={"steps": 3})
    return folder


def test_round_trip_gives_the_same_patch(trained_like_editor, llama, saved):
    assert {p.name for p in saved.iterdir()} == {WEIGHTS_FILE, CONFIG_FILE}
    loaded = Editor.from_pretrained(saved, llama)
    assert loaded.name == trained_like_editor.name and loaded.use_instructions
    assert loaded.metadata["provenance"] == {"steps": 3}
    original = trained_like_editor.edit(REQUEST).patch
    again = loaded.edit(REQUEST).patch
    assert sorted(again.layers) == sorted(original.layers)
    for name, layer in original.layers.items():
        expected = layer.delta_weight()
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(again.layers[name].delta_weight(), expected, atol=1e-2, rtol=0)
    # the residual blocks are not the identity, so this is not a trivial comparison
    identity = Editor.untrained(llama, step_size=0.1, normalize=False).edit(REQUEST).patch
    assert any(not torch.allclose(identity.layers[n].delta_weight(), original.layers[n].delta_weight(),
                                  atol=1e-2) for n in original.layers)


def test_checkpoint_for_another_family_is_refused(tiny_gpt2_dir, llama, tmp_path):
    gpt2 = load_backbone(str(tiny_gpt2_dir), device="cpu")
    folder = tmp_path / "gpt2-editor"
    Editor.untrained(gpt2, step_size=0.1).save_pretrained(folder)
    with pytest.raises(CheckpointError) as info:
        Editor.from_pretrained(folder, llama)
    message = str(info.value)
    assert gpt2.model_id in message and llama.model_id in message
    assert "gpt2" in message and "llama" in message


def test_checkpoint_for_another_model_id_is_refused_when_strict(tiny_llama_dir, saved, llama, tmp_path):
    other_dir = tmp_path / "my-other-llama"
    shutil.copytree(tiny_llama_dir, other_dir)
    other = load_backbone(str(other_dir), device="cpu")
    assert other.model_id != llama.model_id
    with pytest.raises(CheckpointError) as info:
        Editor.from_pretrained(saved, other, strict=True)
    assert llama.model_id in str(info.value) and other.model_id in str(info.value)
    assert Editor.from_pretrained(saved, other, strict=False).edit(REQUEST).patch.layers


def test_truncated_weights_file(saved, llama):
    weights = saved / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        Editor.from_pretrained(saved, llama)
    weights.write_bytes(b"")
    with pytest.raises(CheckpointError, match=WEIGHTS_FILE):
        Editor.from_pretrained(saved, llama)


def test_wrong_tensor_shapes(saved, llama):
    weights = saved / WEIGHTS_FILE
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("down.weight"))
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1], dtype=tensors[key].dtype)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=re.escape(key)):
        Editor.from_pretrained(saved, llama)


def test_missing_tensor_and_nan_tensor(saved, llama):
    weights = saved / WEIGHTS_FILE
    tensors = load_file(str(weights))
    key = next(k for k in tensors if k.endswith("up.weight"))
    nan = dict(tensors)
    nan[key] = torch.full_like(tensors[key], float("nan"))
    save_file(nan, str(weights))
    with pytest.raises(CheckpointError, match="NaN"):
        Editor.from_pretrained(saved, llama)
    save_file({k: v for k, v in tensors.items() if k != key}, str(weights))
    with pytest.raises(CheckpointError, match="missing"):
        Editor.from_pretrained(saved, llama)


def test_invalid_config(saved, llama, tmp_path):
    config = saved / CONFIG_FILE
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="invalid JSON"):
        Editor.from_pretrained(saved, llama)
    data = json.loads(text)
    del data["modules"]
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="missing field 'modules'"):
        Editor.from_pretrained(saved, llama)
    data = json.loads(text)
    data["modules"]["model.layers.3.mlp.up_proj"] = [64, 999]
    config.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shape"):
        Editor.from_pretrained(saved, llama)
    with pytest.raises(CheckpointError, match="does not exist"):
        Editor.from_pretrained(tmp_path / "nowhere", llama)


def _imports_and_calls(source: str) -> tuple[set[str], set[str]]:
    """Imported module names and called (dotted) function names in ``source`` (code only)."""
    tree = ast.parse(source)
    imports, calls = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imports.add(node.module or "")
            imports.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call):
            calls.add(ast.unparse(node.func))
    return imports, calls


def test_loading_never_unpickles(saved, llama, monkeypatch):
    imports, calls = _imports_and_calls(inspect.getsource(checkpoint_module))
    assert "safetensors.torch.load_file" in imports  # the scan sees real imports
    assert not {i for i in imports if "pickle" in i or i.endswith(".load") or i == "torch.load"}, imports
    assert not {c for c in calls if c in ("torch.load", "eval", "exec", "__import__")
                or "pickle" in c}, calls

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert Editor.from_pretrained(saved, llama).edit(REQUEST).patch.layers
