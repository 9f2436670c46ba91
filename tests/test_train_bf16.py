"""Training on a bfloat16 backbone (``TrainConfig.dtype``): the editor's gradients agree with the
float32 step's, a short run learns, and its editor edits a float32 backbone."""
from __future__ import annotations

import json

import pytest
import torch

from instructedit.editing.editor import Editor, EditRequest
from instructedit.model.backbone import load_backbone
from instructedit.model.forward import CachedTopForward
from instructedit.train.config import TrainConfig
from instructedit.train.step import LossWeights, meta_step
from instructedit.train.trainer import Trainer
from tests.data.layout import make_data_dir
from tests.test_train import _config, _examples, seeded_network


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


def _step_gradients(backbone, data_dir) -> tuple[float, torch.Tensor]:
    """Loss and editor-network gradients of one meta step (the same seeded network each call)."""
    from instructedit.data.tasks import load_split

    names = backbone.edited_module_names(2)
    network = seeded_network(backbone, names)
    examples = _examples(load_split(data_dir, "counterfact", "train"))
    pad = backbone.tokenizer.pad_token_id
    network.eval()  # no running-statistics update: both calls start from the same network
    forward = CachedTopForward(backbone, backbone.adapter.layer_index(names[0]))
    step = meta_step(network, names, backbone.model, forward, examples, backbone.tokenizer,
                     LossWeights(1.0, 3.0), pad_id=pad)
    step.loss.backward()
    grads = torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])
    return float(step.loss), grads


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_bf16_step_gives_the_float32_steps_gradients_within_bf16_rounding(family, tiny_llama_dir,
                                                                           tiny_gpt2_dir, data_dir):
    folder = str(tiny_llama_dir if family == "llama" else tiny_gpt2_dir)
    loss32, grad32 = _step_gradients(load_backbone(folder, dtype="float32"), data_dir)
    loss16, grad16 = _step_gradients(load_backbone(folder, dtype="bfloat16"), data_dir)
    assert grad32.abs().sum() > 0 and torch.isfinite(grad16).all()
    assert grad16.dtype == torch.float32  # the editor network trains in float32
    assert abs(loss16 - loss32) <= 0.05 * abs(loss32) + 1e-3, (loss16, loss32)
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cosine > 0.98, float(cosine)


def test_a_short_bf16_run_learns_and_its_editor_edits_a_float32_backbone(tiny_llama_dir, data_dir, tmp_path):
    out = tmp_path / "ckpt"
    config = _config(data_dir, steps=48, val_every=16, log_every=4, model=str(tiny_llama_dir), dtype="bfloat16")
    trainer = Trainer(config, out, tmp_path / "run")
    assert next(trainer.backbone.model.parameters()).dtype == torch.bfloat16
    trainer.train(resume=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert sum(train_losses[-3:]) < sum(train_losses[:3]), train_losses
    saved = json.loads((out / "editor.json").read_text())
    assert saved["provenance"]["train_config"]["dtype"] == "bfloat16"
    editor = Editor.from_pretrained(out, load_backbone(str(tiny_llama_dir)))
    edit = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact", instruction=0))
    assert edit.patch.layers and all(layer.is_finite() for layer in edit.patch.layers.values())


def test_an_unknown_training_dtype_is_refused_before_anything_loads(data_dir, tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="dtype must be one of float32, bfloat16"):
        Trainer(_config(data_dir, model=str(tiny_llama_dir), dtype="float16"), tmp_path / "ckpt", tmp_path / "run")
    assert TrainConfig().dtype is None  # the loader's default: float32 unquantized


def test_the_race_validates_a_bf16_runs_best_checkpoint_again_on_the_float32_backbone(tmp_path):
    """``python -m tests.train_race --tiny --tiny-bf16``: the bf16 recipe's row carries the score
    of its best checkpoint validated on the float32 backbone; the float32 recipe's does not."""
    from tests.train_race import main

    out = tmp_path / "race.json"
    assert main(["--tiny", "--tiny-bf16", "--minutes", "0.02", "--out-dir", str(tmp_path / "race"),
                 "--json", str(out)]) == 0
    float32, bf16 = json.loads(out.read_text())
    assert (float32["name"], bf16["name"]) == ("tiny-b2", "tiny-bf16")
    assert "float32_score" not in float32
    assert 0.0 <= bf16["float32_score"] <= 1.0
    assert bf16["steps_run"] > 0 and bf16["best_score"] is not None
