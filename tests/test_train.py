"""Meta-training on tiny models: cached step == full step, loss goes down, save/reload/edit, resume."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.mend import EditorConfig, MendNetwork
from instructedit.editing.patches import PatchEngine
from instructedit.model.backbone import load_backbone
from instructedit.model.forward import CachedTopForward, FullForward
from instructedit.train.config import TrainConfig
from instructedit.train.examples import render_example
from instructedit.train.step import LossWeights, meta_step
from instructedit.train.trainer import Trainer, validation_score
from tests.data.layout import make_data_dir


def _examples(records, n=3):
    rng = random.Random(0)
    return [render_example(r, 0, rng) for r in records[:n]]


def seeded_network(backbone, names) -> MendNetwork:
    """A seeded editor network off the identity (so its gradients are non-trivial), the
    backbone's ``names`` hooked for patches."""
    torch.manual_seed(0)
    network = MendNetwork(Editor.module_shapes(backbone, names), EditorConfig(rank=8, init_lr=1e-2))
    with torch.no_grad():
        for module in network.modules():
            if hasattr(module, "up") and isinstance(module.up, torch.nn.Linear):
                module.up.weight.normal_(0, 0.05)
    PatchEngine.for_model(backbone.model, names)
    return network


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_step_equals_full_step(family, tiny_llama_dir, tiny_gpt2_dir, data_dir):
    from instructedit.data.tasks import load_split

    folder = tiny_llama_dir if family == "llama" else tiny_gpt2_dir
    backbone = load_backbone(str(folder))
    names = backbone.edited_module_names(2)
    network = seeded_network(backbone, names)
    examples = _examples(load_split(data_dir, "counterfact", "train"))
    pad = backbone.tokenizer.pad_token_id
    # one training-mode pass fills the running statistics, then compare in eval mode
    meta_step(network, names, backbone.model, FullForward(backbone), examples, backbone.tokenizer,
              LossWeights(), pad_id=pad)
    network.eval()
    start = backbone.adapter.layer_index(names[0])
    results = {}
    for kind, forward in (("full", FullForward(backbone)), ("cached", CachedTopForward(backbone, start))):
        network.zero_grad()
        step = meta_step(network, names, backbone.model, forward, examples, backbone.tokenizer,
                         LossWeights(1.0, 3.0), pad_id=pad)
        step.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])
        results[kind] = (step.loss.detach(), grads.clone())
    (loss_full, grad_full), (loss_cached, grad_cached) = results["full"], results["cached"]
    assert grad_full.abs().sum() > 0
    assert torch.allclose(loss_full, loss_cached, rtol=1e-4, atol=1e-5)
    assert torch.allclose(grad_full, grad_cached, rtol=1e-4, atol=1e-4 * grad_full.abs().max())


def test_validation_score_needs_both():
    assert validation_score(1.0, 1.0) == 1.0
    assert validation_score(1.0, 0.0) == 0.0
    assert validation_score(0.9, 0.5) < 0.7


def _config(data_dir, steps=24, **kw):
    base = dict(data=str(data_dir), steps=steps, batch_size=2, rank=8, val_every=8, val_per_task=3,
                pool_per_task=8, editor_lr=3e-3, step_size_lr=3e-2, init_lr=1e-3, patience=100,
                tasks=("counterfact", "recent", "convsent"), last_n_layers=2, max_answer_tokens=8)
    base.update(kw)
    return TrainConfig(**base)


def test_short_training_run_learns_saves_reloads_and_edits(tiny_llama_dir, data_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir))
    out = tmp_path / "ckpt"
    config = _config(data_dir, steps=48, val_every=16, log_every=4, model=str(tiny_llama_dir))
    trainer = Trainer(config, out, tmp_path / "run", backbone)
    trainer.train(resume=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["loss"] for r in rows if r["kind"] == "train"]
    vals = [r for r in rows if r["kind"] == "val"]
    assert len(vals) == 3 and all("counterfact" in v for v in vals)
    assert sum(train_losses[-3:]) < sum(train_losses[:3]), train_losses
    editor = Editor.from_pretrained(out, backbone)
    config = json.loads((out / "editor.json").read_text())
    assert config["provenance"]["steps"] > 0 and config["use_instructions"] is True
    edit = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact",
                                   instruction=0))
    assert edit.patch.layers and all(layer.is_finite() for layer in edit.patch.layers.values())


def test_resume_after_interruption_matches_uninterrupted_run(tiny_llama_dir, data_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir))
    cfg = _config(data_dir, steps=16, model=str(tiny_llama_dir))
    full = Trainer(cfg, tmp_path / "a", tmp_path / "run-a", backbone)
    full.train(resume=False)
    # "kill" after the first validation: run 8 steps, then a new trainer resumes from the state file
    part_cfg = _config(data_dir, steps=16, model=str(tiny_llama_dir))
    first = Trainer(part_cfg, tmp_path / "b", tmp_path / "run-b", backbone)
    first.train(resume=False, stop_at=8)
    del first
    resumed = Trainer(part_cfg, tmp_path / "b", tmp_path / "run-b", backbone)
    assert resumed.resume() and resumed.step == 8
    resumed.train(resume=False)
    for (name, a), (_, b) in zip(full.network.state_dict().items(), resumed.network.state_dict().items(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_zsre_is_never_trained(data_dir, tmp_path, tiny_llama_dir):
    backbone = load_backbone(str(tiny_llama_dir))
    with pytest.raises(ValueError, match="held-out"):
        Trainer(_config(data_dir, tasks=("counterfact", "zsre")), tmp_path / "c", tmp_path / "r", backbone)


def test_continuation_cache_generates_each_prefix_once_and_matches_greedy(tiny_llama_dir, data_dir):
    from instructedit.data.tasks import load_split
    from instructedit.model.generation import generate_ids
    from instructedit.train.continuations import ContinuationCache

    backbone = load_backbone(str(tiny_llama_dir))
    examples = _examples(load_split(data_dir, "counterfact", "train"))
    cache = ContinuationCache(backbone, 4)
    filled = cache.fill(examples + examples[:1])
    assert len(cache) == len({e.continuation_prefix for e in examples})
    for example in filled:
        expected = generate_ids(backbone, [example.continuation_prefix], 4)[0]
        assert list(example.continuation) == expected and 1 <= len(expected) <= 4
        assert example.continuation_prefix.startswith(example.typed_prompt)
        assert example.continuation_prefix.endswith(" " + example.target.strip())
    with pytest.raises(ValueError, match="at least one token"):
        ContinuationCache(backbone, 0)


def test_continuation_kl_is_zero_without_an_update_and_counts_in_the_loss(tiny_llama_dir, data_dir):
    from instructedit.data.tasks import load_split
    from instructedit.train.continuations import ContinuationCache

    backbone = load_backbone(str(tiny_llama_dir))
    names = backbone.edited_module_names(2)
    PatchEngine.for_model(backbone.model, names)
    examples = ContinuationCache(backbone, 4).fill(_examples(load_split(data_dir, "counterfact", "train")))
    pad = backbone.tokenizer.pad_token_id
    torch.manual_seed(0)
    results = {}
    for init_lr in (0.0, 5e-1):  # a zero step size makes the identity update: nothing may move
        network = MendNetwork(Editor.module_shapes(backbone, names), EditorConfig(rank=8, init_lr=max(init_lr, 1e-12)))
        if init_lr == 0.0:
            with torch.no_grad():
                network.log_lr.fill_(-80.0)
        with torch.no_grad():
            on = meta_step(network, names, backbone.model, FullForward(backbone), examples,
                           backbone.tokenizer, LossWeights(0.0, 1.0, continuation=True), pad_id=pad)
            off = meta_step(network, names, backbone.model, FullForward(backbone), examples,
                            backbone.tokenizer, LossWeights(0.0, 1.0), pad_id=pad)
        results[init_lr] = (on, off)
    quiet_on, quiet_off = results[0.0]
    assert quiet_on.continuation is not None and bool((quiet_on.continuation == 1.0).all())
    assert float(quiet_on.loss) == pytest.approx(float(quiet_off.loss), abs=1e-6)
    loud_on, loud_off = results[5e-1]
    assert float(loud_on.loss) > float(loud_off.loss)  # the moved continuation adds its KL
    with pytest.raises(ValueError, match="continuation"):
        meta_step(network, names, backbone.model, FullForward(backbone), _examples(load_split(data_dir, "counterfact", "train")),
                  backbone.tokenizer, LossWeights(continuation=True), pad_id=pad)


def test_training_with_the_continuation_kl_validates_it(tiny_llama_dir, data_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir))
    config = _config(data_dir, steps=8, val_every=8, model=str(tiny_llama_dir), continuation_kl_tokens=3)
    trainer = Trainer(config, tmp_path / "ckpt", tmp_path / "run", backbone)
    best = trainer.train(resume=False)
    assert 0.0 <= best["counterfact"]["continuation"] <= 1.0
    with pytest.raises(ValueError, match="continuation_kl_tokens"):
        Trainer(_config(data_dir, continuation_kl_tokens=-1), tmp_path / "c", tmp_path / "r", backbone)


def test_a_run_can_start_from_a_saved_editor_and_refuses_a_different_one(tiny_llama_dir, data_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir))
    first = Trainer(_config(data_dir, steps=8, model=str(tiny_llama_dir)), tmp_path / "a", tmp_path / "ra", backbone)
    first.train(resume=False)
    saved = Editor.from_pretrained(tmp_path / "a", backbone).network.state_dict()
    second = Trainer(_config(data_dir, steps=8, model=str(tiny_llama_dir), init_from=str(tmp_path / "a")),
                     tmp_path / "b", tmp_path / "rb", backbone)
    for key, value in second.network.state_dict().items():
        assert torch.equal(value.float(), saved[key].float()), key
    with pytest.raises(ValueError, match="editor settings"):
        Trainer(_config(data_dir, rank=4, model=str(tiny_llama_dir), init_from=str(tmp_path / "a")),
                tmp_path / "c", tmp_path / "rc", backbone)
    with pytest.raises(ValueError, match="use of instructions"):
        Trainer(_config(data_dir, use_instructions=False, model=str(tiny_llama_dir), init_from=str(tmp_path / "a")),
                tmp_path / "d", tmp_path / "rd", backbone)


def test_the_neighbours_continuation_kl_holds_their_sentences_too(tiny_llama_dir, data_dir, tmp_path):
    from instructedit.data.neighbours import NeighbourIndex
    from instructedit.data.tasks import load_split
    from instructedit.train.continuations import ContinuationCache

    backbone = load_backbone(str(tiny_llama_dir))
    records = load_split(data_dir, "counterfact", "train")
    rng = random.Random(0)
    index = NeighbourIndex(records)
    examples = [render_example(r, 0, rng, neighbours=index) for r in records[:3]]
    filled = ContinuationCache(backbone, 3).fill(examples, neighbours=True)
    for example in filled:
        assert example.neighbour_continuation and example.neighbour_prefix.endswith(
            " " + (example.neighbour_answer or example.locality_answer).strip())
    names = backbone.edited_module_names(2)
    PatchEngine.for_model(backbone.model, names)
    network = MendNetwork(Editor.module_shapes(backbone, names), EditorConfig(rank=8, init_lr=0.5))
    pad = backbone.tokenizer.pad_token_id
    with torch.no_grad():
        both = meta_step(network, names, backbone.model, FullForward(backbone), filled, backbone.tokenizer,
                         LossWeights(0.0, 1.0, continuation=True, continuation_neighbours=True), pad_id=pad)
        own = meta_step(network, names, backbone.model, FullForward(backbone), filled, backbone.tokenizer,
                        LossWeights(0.0, 1.0, continuation=True), pad_id=pad)
    assert both.neighbour_continuation is not None and own.neighbour_continuation is None
    assert torch.equal(both.continuation, own.continuation)  # the edits' own rows are unchanged
    assert both.neighbour_continuation.shape == (len(filled),)
    config = _config(data_dir, steps=8, val_every=8, model=str(tiny_llama_dir), continuation_kl_tokens=3,
                     neighbour_locality=True, continuation_kl_neighbours=True)
    best = Trainer(config, tmp_path / "ckpt", tmp_path / "run", backbone).train(resume=False)
    assert 0.0 <= best["counterfact"]["neighbour_continuation"] <= 1.0
    with pytest.raises(ValueError, match="neighbour_locality"):
        Trainer(_config(data_dir, continuation_kl_tokens=3, continuation_kl_neighbours=True),
                tmp_path / "c", tmp_path / "r", backbone)


def test_parts_stacked_in_one_forward_score_as_apart(tiny_model_dir, data_dir):
    """The step runs several texts' rows in one forward, each row with its own example's patch:
    every part's logits equal those of the part run alone; the edit gradients' pass grouped by
    length gives the same patch."""
    from instructedit.data.neighbours import NeighbourIndex
    from instructedit.data.tasks import load_split
    from instructedit.editing.editor import patch_from_inputs
    from instructedit.scoring import every_position
    from instructedit.train.step import _logits_of_parts, tokenize_examples

    backbone = load_backbone(str(tiny_model_dir))
    records = load_split(data_dir, "counterfact", "train")
    rng = random.Random(0)
    examples = [render_example(r, 0, rng, neighbours=NeighbourIndex(records)) for r in records[:4]]
    names = backbone.edited_module_names(2)
    PatchEngine.for_model(backbone.model, names)
    torch.manual_seed(0)
    network = MendNetwork(Editor.module_shapes(backbone, names),
                          EditorConfig(rank=8, init_lr=0.5, edit_from="wrapped+plain")).eval()
    weights = LossWeights(plain=True, neighbour=True)
    batches = tokenize_examples(backbone.tokenizer, network, examples, weights=weights)
    forward, pad = FullForward(backbone), backbone.tokenizer.pad_token_id
    patch, logits = patch_from_inputs(network, names, batches.sources, forward, backbone.model, pad_id=pad)
    grouped, grouped_logits = patch_from_inputs(network, names, batches.sources, forward, backbone.model,
                                                pad_id=pad, by_length=True)
    assert torch.allclose(grouped_logits, logits, atol=1e-5)
    for name, layer in patch.layers.items():  # the edit gradients' pass grouped by length: same factors
        other = grouped.layers[name]
        assert torch.allclose(other.u, layer.u, atol=1e-5) and torch.allclose(other.d, layer.d, atol=1e-6)
        assert layer.d.abs().sum() > 0
    parts = [batches.plain, every_position(batches.locality)[0], batches.neighbour, batches.edit]
    with torch.no_grad():
        stacked = _logits_of_parts(backbone.model, forward, parts, pad, patch, len(examples))
        alone = [_logits_of_parts(backbone.model, forward, [part], pad, patch, len(examples))[0]
                 for part in parts]
        unpatched = _logits_of_parts(backbone.model, forward, parts, pad)
    assert len({p.input_ids.shape[1] for p in parts}) > 1  # the parts really differ in width
    for got, want, before in zip(stacked, alone, unpatched, strict=True):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)
        assert not torch.allclose(got, before, atol=1e-3)  # the patches act


def test_length_buckets_keep_padding_small_and_select_rows_keeps_entries():
    from instructedit.scoring import length_buckets, tokenize_answers
    from tests.tiny_models import build_tokenizer

    buckets = length_buckets([10, 55, 16, 50, 15, 33, 40])
    assert sorted(i for b in buckets for i in b) == list(range(7))
    lengths = [10, 55, 16, 50, 15, 33, 40]
    for bucket in buckets:  # longest first, every row at least 3/4 of its bucket's width
        assert all(lengths[i] >= 0.75 * lengths[bucket[0]] for i in bucket)
    assert buckets == [[1, 3], [6, 5], [2, 4], [0]]
    tokenizer = build_tokenizer()
    batch = tokenize_answers(tokenizer, ["a b", "a b c d e f", "a"], ["c d", "g", "b c d"])
    sub, entries = batch.select_rows([2, 0])
    assert sub.size == 2 and sub.input_ids.shape[1] == int(batch.attention_mask[[0, 2]].sum(1).max())
    assert torch.equal(sub.answer_tokens, batch.answer_tokens[entries])
    count = [int((batch.rows == r).sum()) for r in (2, 0)]
    assert sub.rows.tolist() == [0] * count[0] + [1] * count[1]  # row 2's answer tokens, then row 0's
    for e, (row, pos) in enumerate(zip(sub.rows.tolist(), sub.positions.tolist(), strict=True)):
        original = [2, 0][row]
        assert sub.input_ids[row, pos + 1] == batch.input_ids[original, pos + 1] == sub.answer_tokens[e]


def test_the_run_generates_its_records_continuations_up_front(tiny_llama_dir, data_dir, tmp_path):
    backbone = load_backbone(str(tiny_llama_dir))
    config = _config(data_dir, steps=3, val_every=3, model=str(tiny_llama_dir), continuation_kl_tokens=2)
    trainer = Trainer(config, tmp_path / "ckpt", tmp_path / "run", backbone)
    known = len(trainer.continuations)  # the validation examples'
    drawn = trainer.prefill_continuations()
    stream = trainer._stream()
    prefixes = {e.continuation_prefix for step in range(3) for e in trainer.batch_at(step, stream)}
    assert 0 < drawn <= config.steps * config.batch_size
    assert len(trainer.continuations) == known + drawn >= len(prefixes)  # batch_at generated nothing new
    assert trainer.prefill_continuations() == 0


def test_the_step_profile_tool_counts_tokens_and_bounds(tmp_path):
    """``python -m tests.train_profile --tiny``: both layouts timed on the same batches, the passes'
    tokens counted (grouping by length never pads more than one forward per kind of text), the
    FLOP bound below the measured step."""
    from tests.train_profile import main

    out = tmp_path / "profile.json"
    assert main(["--tiny", "--batches", "2", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["step_s"]) == {"grouped", "per_kind"} and all(v > 0 for v in result["step_s"].values())
    for t in result["passes"].values():
        assert t["real"] <= t["grouped"] <= t["per_kind"] and t["scored"] > 0
    bound = result["bound_s"]
    assert 0 < bound["real"] <= bound["grouped"] <= bound["per_kind"] < result["step_s"]["per_kind"]
    assert result["continuations"]["prefixes"] >= 2 and result["continuations"]["up_front_s"] > 0


def test_a_time_budget_ends_the_run_validated_and_the_race_reads_it(tmp_path):
    """``max_minutes`` stops a run once its own clock passes the budget, with a last validation;
    ``python -m tests.train_race --tiny`` trains two recipes under one budget and reports when each
    first reached the target and its curve."""
    from tests.train_race import main, validations

    out = tmp_path / "race.json"
    assert main(["--tiny", "--minutes", "0.02", "--out-dir", str(tmp_path / "race"), "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == ["tiny-b2", "tiny-b4"]
    for r in results:
        rows = validations(tmp_path / "race" / r["name"] / "run")
        assert rows and rows[-1]["step"] == r["steps_run"] < 100_000  # stopped by the clock, not the steps
        assert rows[-1]["wall_time_s"] >= 0.02 * 60 and all("wall_time_s" in row for row in rows)
        assert r["reached_step"] == rows[0]["step"]  # target 0: the first validation reaches it
        assert r["best_score"] == round(max(row["score"] for row in rows), 4)
        assert len(r["curve"]) == len(rows)


def test_a_card_names_the_repository_recipe_that_retrains_it(tmp_path):
    """The shipped editors were trained elsewhere (their recorded commands name paths of those
    machines); their cards name the recipe in docs/recipes with the same settings."""
    from instructedit.train.card import render_card
    from instructedit.train.config import matching_recipe

    shipped = json.loads(open("checkpoints/smollm2-135m/instructedit/editor.json").read())
    train_cfg = shipped["provenance"]["train_config"]
    assert matching_recipe(train_cfg).name == "r4-mid9-pre.json"
    assert matching_recipe({**train_cfg, "c_loc": 0.5}) is None  # a setting differs
    assert matching_recipe({**train_cfg, "steps": 7, "data": "elsewhere"}).name == "r4-mid9-pre.json"
    assert matching_recipe(train_cfg, tmp_path) is None  # no recipes folder (an installed package)
    card = render_card(Path("checkpoints/smollm2-135m/instructedit"))
    assert "--config docs/recipes/r4-mid9-pre.json" in card and "Recorded command" in card
