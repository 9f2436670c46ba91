"""Edit schedules: a trained network's update applied in several passes and/or scaled."""
from __future__ import annotations

import json

import pytest
import torch

from instructedit.editing.checkpoint import CheckpointError
from instructedit.editing.editor import Editor, EditRequest, EditSchedule
from instructedit.model.backbone import load_backbone

from .cli_helpers import run_main
from .test_evaluate import DATA


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


REQUEST = EditRequest("The Eiffel Tower is located in", "Rome Italy")


def _deltas(edit) -> dict[str, torch.Tensor]:
    return {name: layer.delta_weight() for name, layer in edit.patch.layers.items()}


def test_strength_multiplies_the_update(llama):
    editor = Editor.untrained(llama, step_size=0.5)
    one = _deltas(editor.edit(REQUEST))
    twice = _deltas(editor.with_schedule(EditSchedule(strength=2.5)).edit(REQUEST))
    for name, delta in one.items():
        assert delta.abs().max() > 1e-4
        torch.testing.assert_close(twice[name], 2.5 * delta, atol=1e-6, rtol=1e-5, msg=name)


def test_two_steps_are_the_second_edit_made_on_top_of_the_first(llama):
    editor = Editor.untrained(llama, step_size=0.5)
    first = editor.edit(REQUEST)
    second = editor.edit(REQUEST, active=[first])
    scheduled = editor.with_schedule(EditSchedule(steps=2)).edit(REQUEST)
    for name, delta in _deltas(scheduled).items():
        expected = first.patch.layers[name].delta_weight() + second.patch.layers[name].delta_weight()
        assert (second.patch.layers[name].delta_weight() - first.patch.layers[name].delta_weight()).abs().max() > 1e-6
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("use_instructions", [True, False])
def test_steps_of_an_editor_that_edits_from_wrapped_and_plain(llama, use_instructions):
    from instructedit.editing.mend import EditorConfig, MendNetwork

    config = EditorConfig(rank=8, n_blocks=1, init_lr=0.5, normalize=False, edit_from="wrapped+plain")
    network = MendNetwork(Editor.module_shapes(llama, llama.edited_module_names()), config)
    editor = Editor(llama, network, use_instructions=use_instructions, patch_rank=None)
    request = EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact", instruction=0)
    first = editor.edit(request)
    second = editor.edit(request, active=[first])
    scheduled = editor.with_schedule(EditSchedule(steps=2)).edit(request)
    for name, delta in _deltas(scheduled).items():
        expected = first.patch.layers[name].delta_weight() + second.patch.layers[name].delta_weight()
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4, msg=name)


def test_steps_stack_on_active_edits(llama):
    editor = Editor.untrained(llama, step_size=0.5)
    other = editor.edit(EditRequest("The capital of France is", "Berlin"))
    first = editor.edit(REQUEST, active=[other])
    second = editor.edit(REQUEST, active=[other, first])
    scheduled = editor.with_schedule(EditSchedule(steps=2)).edit(REQUEST, active=[other])
    for name, delta in _deltas(scheduled).items():
        expected = first.patch.layers[name].delta_weight() + second.patch.layers[name].delta_weight()
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-4, msg=name)


def _held(editor, edit, request=REQUEST) -> float:
    """The target's per-token probability (geometric mean) on the request's prompt with ``edit`` on."""
    from instructedit.editing.patches import PatchEngine
    from instructedit.scoring import full_model_answer_logits, score_answers, tokenize_answers

    batch = tokenize_answers(editor.backbone.tokenizer, [request.prompt], [request.target])
    with torch.no_grad(), PatchEngine.activate([edit.patch]):
        logits = full_model_answer_logits(editor.backbone.model, batch)
    return float(torch.exp(-score_answers(logits, batch).mean_nll[0]))


def test_until_stops_the_passes_once_the_edit_holds(llama):
    editor = Editor.untrained(llama, step_size=0.05)
    by_passes = [editor.with_schedule(EditSchedule(steps=k)).edit(REQUEST) for k in range(1, 7)]
    held = [_held(editor, edit) for edit in by_passes]
    assert all(a < b for a, b in zip(held, held[1:], strict=False)), held  # every pass moves the target up
    for stop_after in (1, 3, 6):
        # a probability reached after ``stop_after`` passes and not before
        until = (held[stop_after - 2] + held[stop_after - 1]) / 2 if stop_after > 1 else held[0] / 2
        if stop_after == 6:
            until = (held[5] + 1) / 2  # never reached: every pass is taken
        scheduled = editor.with_schedule(EditSchedule(steps=6, until=until)).edit(REQUEST)
        for name, delta in _deltas(scheduled).items():
            torch.testing.assert_close(delta, _deltas(by_passes[stop_after - 1])[name], atol=1e-5, rtol=1e-4,
                                       msg=f"{name}, until {until}")


def test_until_stops_each_edit_of_a_batch_on_its_own(llama):
    from instructedit.editing.editor import scheduled_patch_from_inputs, tokenize_edit_inputs, unbatch_patch

    editor = Editor.untrained(llama, step_size=0.05)
    easy, hard = EditRequest("The Eiffel Tower is located in", "Rome"), EditRequest(
        "The mother tongue of Danielle Darrieux is", "English language and literature")
    easy_held = [_held(editor, editor.with_schedule(EditSchedule(steps=k)).edit(easy), easy) for k in (1, 2)]
    until = (easy_held[0] + easy_held[1]) / 2  # the easy edit holds after two passes
    schedule = EditSchedule(steps=4, until=until)
    alone = [editor.with_schedule(schedule).edit(r) for r in (easy, hard)]
    three = editor.with_schedule(EditSchedule(steps=3)).edit(hard)
    assert _held(editor, three, hard) < until  # the hard one does not hold before its fourth pass
    inputs = tokenize_edit_inputs(llama.tokenizer, editor.network, [easy.prompt, hard.prompt],
                                  [easy.prompt, hard.prompt], [easy.target, hard.target], [None, None])
    batched, _ = scheduled_patch_from_inputs(editor.network, editor.module_names, inputs, editor.full_hidden,
                                             llama.model, schedule, pad_id=llama.tokenizer.pad_token_id or 0)
    for row, edit in enumerate(alone):
        for name, layer in unbatch_patch(batched, row).layers.items():
            torch.testing.assert_close(layer.delta_weight(), edit.patch.layers[name].delta_weight(),
                                       atol=1e-5, rtol=1e-4, msg=f"row {row}, {name}")
    for request, edit, passes in ((easy, alone[0], 2), (hard, alone[1], 4)):
        expected = _deltas(editor.with_schedule(EditSchedule(steps=passes)).edit(request))
        for name, delta in _deltas(edit).items():
            torch.testing.assert_close(delta, expected[name], atol=1e-5, rtol=1e-4, msg=f"{request.target}: {name}")


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "edit steps"), ({"steps": 9}, "edit steps"), ({"steps": 1.5}, "edit steps"),
    ({"strength": 0}, "edit strength"), ({"strength": -1.0}, "edit strength"),
    ({"strength": 11.0}, "edit strength"), ({"strength": "2"}, "edit strength"),
    ({"until": 0}, "edit until"), ({"until": 1.0}, "edit until"), ({"until": True}, "edit until"),
    ({"until": "0.9"}, "edit until"),
])
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EditSchedule(**kwargs)


def test_schedule_from_dict():
    assert EditSchedule.from_dict(None) == EditSchedule()
    assert EditSchedule.from_dict({"steps": 2, "strength": 1.5}) == EditSchedule(2, 1.5)
    assert EditSchedule(2, 1.5).label() == "steps 2, strength 1.5" and EditSchedule().label() == ""
    with pytest.raises(ValueError, match="unknown fields: speed"):
        EditSchedule.from_dict({"speed": 3})
    with pytest.raises(ValueError, match="must be an object"):
        EditSchedule.from_dict([2])
    until = EditSchedule(6, 0.4, until=0.9)
    assert until.to_dict() == {"steps": 6, "strength": 0.4, "until": 0.9}
    assert EditSchedule.from_dict(until.to_dict()) == until and until.short() == "6x0.4u0.9"
    assert until.label() == "steps 6, strength 0.4, until p >= 0.9" and not until.is_default
    assert until.with_overrides(until=0) == EditSchedule(6, 0.4) and until.with_overrides(steps=3).until == 0.9


def test_checkpoint_carries_its_schedule(llama, tmp_path):
    editor = Editor.untrained(llama, step_size=0.5).with_schedule(EditSchedule(steps=2, strength=1.5))
    editor.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "editor.json").read_text())
    assert config["edit_schedule"] == {"steps": 2, "strength": 1.5}
    loaded = Editor.from_pretrained(tmp_path / "ckpt", llama)
    assert loaded.schedule == EditSchedule(2, 1.5)
    assert loaded.with_patch_rank(None).schedule == EditSchedule(2, 1.5)
    # the default schedule is not written at all
    Editor.untrained(llama, step_size=0.5).save_pretrained(tmp_path / "plain")
    assert "edit_schedule" not in json.loads((tmp_path / "plain" / "editor.json").read_text())


def test_checkpoint_with_a_bad_schedule_is_refused_clearly(llama, tmp_path):
    Editor.untrained(llama, step_size=0.5).save_pretrained(tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "editor.json"
    config = json.loads(path.read_text())
    config["edit_schedule"] = {"steps": 0}
    path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="edit_schedule: edit steps must be"):
        Editor.from_pretrained(tmp_path / "ckpt", llama)


def _eval(capsys, model_dir, *extra):
    code, out, err = run_main(capsys, "eval", "--model", str(model_dir), "--editor", "gradient",
                              "--step-size", "0.02", "--data", str(DATA / "easyedit_cf.json"),
                              "--json", "--no-progress", "--no-plain", *extra)
    assert code == 0, err
    return json.loads(out)


def test_eval_applies_the_schedule(capsys, tiny_llama_dir):
    one = _eval(capsys, tiny_llama_dir)
    assert one["edit_schedule"] == {"steps": 1, "strength": 1.0}
    stronger = _eval(capsys, tiny_llama_dir, "--edit-strength", "3")
    assert stronger["edit_schedule"] == {"steps": 1, "strength": 3.0}
    assert stronger["target_prob_post"] > one["target_prob_post"]
    more = _eval(capsys, tiny_llama_dir, "--edit-steps", "3")
    assert more["edit_schedule"] == {"steps": 3, "strength": 1.0}
    assert more["target_prob_post"] > one["target_prob_post"]


def test_eval_refuses_a_bad_schedule(capsys, tiny_llama_dir):
    code, _, err = run_main(capsys, "eval", "--model", str(tiny_llama_dir), "--editor", "gradient",
                            "--data", str(DATA / "easyedit_cf.json"), "--edit-steps", "0")
    assert code != 0 and "edit steps must be an integer from 1 to 8, got 0" in err


def test_app_config_overrides_the_schedule(tiny_llama_dir):
    from instructedit.web.config import AppConfig
    from instructedit.web.loading import load_models

    with pytest.raises(ValueError, match="edit strength"):
        AppConfig(model=str(tiny_llama_dir), edit_strength=0.0)
    loaded = load_models(AppConfig(model=str(tiny_llama_dir), quant="none", device="cpu", editor="none",
                                   baseline_editor="none", compare="none", edit_steps=2))
    assert loaded.editor.schedule == EditSchedule(steps=2, strength=1.0)
    with pytest.raises(ValueError, match="edit until"):
        AppConfig(model=str(tiny_llama_dir), edit_until=2.0)
    assert AppConfig(model=str(tiny_llama_dir), edit_until=0.9).schedule_overrides == (None, None, None, 0.9)


# ----- calibration ------------------------------------------------------------------------------
def test_parse_schedule():
    from instructedit.evaluate.calibration import parse_schedule

    assert parse_schedule("2x1.5") == EditSchedule(2, 1.5)
    assert parse_schedule(" 3 ") == EditSchedule(3, 1.0)
    assert parse_schedule("6x0.4u0.9") == EditSchedule(6, 0.4, until=0.9)
    assert parse_schedule("4x.5ru.8") == EditSchedule(4, 0.5, rekey=True, until=0.8)
    with pytest.raises(ValueError, match="edit until"):
        parse_schedule("4x0.4u1.5")
    with pytest.raises(ValueError, match="STEPSxSTRENGTH"):
        parse_schedule("fast")
    with pytest.raises(ValueError, match="edit strength"):
        parse_schedule("1x0")


def test_schedule_score_balances_efficacy_and_specificity():
    from instructedit.evaluate.calibration import schedule_score

    base = {"plain_reliability": 0.5, "plain_generalization": 0.3, "generation_success": 0.4,
            "neighbourhood_score": 0.6, "neighbour_bleed": 0.1, "unrelated_bleed": 0.0,
            "fluency_ratio": 0.99}
    score = schedule_score(base, 0.75, 0.95)
    efficacy, specificity = 0.4, (0.8 + 0.9 + 1.0 + 0.99) / 4
    assert score == pytest.approx(2 * efficacy * specificity / (efficacy + specificity))
    # more efficacy at the same specificity scores higher; more bleed scores lower
    assert schedule_score({**base, "generation_success": 0.9}, 0.75, 0.95) > score
    assert schedule_score({**base, "neighbour_bleed": 0.5}, 0.75, 0.95) < score
    # the ceiling caps the neighbourhood share; lost fluency is not eligible; no plain protocol: None
    assert schedule_score({**base, "neighbourhood_score": 0.9}, 0.75, 0.95) == pytest.approx(
        schedule_score({**base, "neighbourhood_score": 0.75}, 0.75, 0.95))
    assert schedule_score({**base, "fluency_ratio": 0.9}, 0.75, 0.95) is None
    assert schedule_score({**base, "fluency_ratio": 0.9}, 0.75, 0.85) < score  # counted, not gated
    assert schedule_score({"reliability": 1.0}, 0.75, 0.95) is None


def test_schedule_score_may_refuse_a_schedule_with_too_many_degenerate_edits():
    from instructedit.evaluate.calibration import CalibrationConfig, schedule_score

    base = {"plain_reliability": 0.9, "plain_generalization": 0.6, "generation_success": 0.9,
            "neighbourhood_score": 0.6, "neighbour_bleed": 0.1, "unrelated_bleed": 0.0,
            "fluency_ratio": 0.97, "degenerate": 0.4}
    score = schedule_score(base, 0.75, 0.85)
    assert score is not None  # no limit by default: the documented calibrations stay as they were
    assert schedule_score(base, 0.75, 0.85, max_degenerate=0.5) == score
    assert schedule_score(base, 0.75, 0.85, max_degenerate=0.3) is None
    assert schedule_score({**base, "degenerate": None}, 0.75, 0.85, max_degenerate=0.3) == score  # not measured
    with pytest.raises(ValueError, match="max_degenerate"):
        CalibrationConfig(max_degenerate=1.5)


def test_calibrate_command_chooses_and_writes(capsys, tiny_llama_dir, tmp_path):
    from tests.data.layout import make_data_dir

    data = make_data_dir(tmp_path / "data")
    llama = load_backbone(str(tiny_llama_dir), device="cpu")
    Editor.untrained(llama, step_size=0.05).save_pretrained(tmp_path / "ckpt")
    weights = (tmp_path / "ckpt" / "editor.safetensors").read_bytes()
    out = tmp_path / "calibration.json"
    code, stdout, err = run_main(capsys, "calibrate", "--model", str(tiny_llama_dir), "--editor",
                                 str(tmp_path / "ckpt"), "--data", str(data), "--limit", "3",
                                 "--schedules", "1x1,2x1,1x3", "--min-fluency", "0", "--write",
                                 "--out", str(out))
    assert code == 0, err
    report = json.loads(out.read_text())
    assert [c["schedule"] for c in report["candidates"]] == [
        {"steps": 1, "strength": 1.0}, {"steps": 2, "strength": 1.0}, {"steps": 1, "strength": 3.0}]
    best = max(report["candidates"], key=lambda c: c["score"])
    assert report["chosen"] == best["schedule"] and "<- chosen" in stdout
    # more passes or strength move the target more: efficacy grows
    posts = [c["summaries"]["counterfact"]["target_prob_post"] for c in report["candidates"]]
    assert posts[1] > posts[0] and posts[2] > posts[0]
    config = json.loads((tmp_path / "ckpt" / "editor.json").read_text())
    assert config["edit_schedule"] == report["chosen"]
    assert config["edit_schedule_calibration"]["split"] == "val"
    assert (tmp_path / "ckpt" / "editor.safetensors").read_bytes() == weights
    assert Editor.from_pretrained(tmp_path / "ckpt", llama).schedule == EditSchedule.from_dict(report["chosen"])


def _saved_calibration(editor) -> dict:
    """A saved calibration (calibrate --out) of two schedules: 8x0.3u0.5 scores higher but leaves
    more degenerate edits than 6x0.4u0.3."""
    def summary(reach, degenerate):
        return {"plain_reliability": reach, "plain_generalization": 0.6, "generation_success": reach,
                "neighbourhood_score": 0.6, "neighbour_bleed": 0.05, "unrelated_bleed": 0.0,
                "fluency_ratio": 0.97, "degenerate": degenerate}
    return {"editor": str(editor), "data": "data", "split": "val", "tasks": ["counterfact", "recent"], "limit": 50, "seed": 0,
            "quantization": "4bit", "min_fluency": 0.85, "max_degenerate": None, "date": "2026-12-07T00:00:00+00:00",
            "unedited": {"counterfact": {"neighbourhood_score": 0.66}, "recent": {"neighbourhood_score": 0.61}},
            "chosen": {"steps": 8, "strength": 0.3, "until": 0.5},
            "candidates": [
                {"schedule": {"steps": 8, "strength": 0.3, "until": 0.5},
                 "summaries": {"counterfact": summary(0.99, 0.44), "recent": summary(0.8, 0.5)}},
                {"schedule": {"steps": 6, "strength": 0.4, "until": 0.3},
                 "summaries": {"counterfact": summary(0.97, 0.36), "recent": summary(0.78, 0.3)}}]}


def test_rescore_chooses_again_under_other_limits(tmp_path):
    from instructedit.evaluate.calibration import rescore

    saved = _saved_calibration(tmp_path)
    loose, strict = rescore(saved, 0.85, None), rescore(saved, 0.85, 0.4)
    assert loose.chosen == EditSchedule(8, 0.3, until=0.5) and strict.chosen == EditSchedule(6, 0.4, until=0.3)
    assert strict.candidates[0].score is None and strict.candidates[0].scores["recent"] is None
    assert strict.candidates[0].scores["counterfact"] is None  # 0.44 > 0.4 there too
    assert strict.candidates[1].score == pytest.approx(loose.candidates[1].score)  # limits gate, never rescale
    assert rescore(saved, 0.85, 0.2).chosen is None
    for broken in ({}, {"unedited": {}, "candidates": saved["candidates"]}, {"unedited": {}, "candidates": []},
                   {**saved, "candidates": [{"schedule": {"steps": 0}}]}):
        with pytest.raises(ValueError):
            rescore(broken, 0.85, None)


def test_calibrate_from_a_saved_run_writes_without_evaluating(capsys, llama, tmp_path):
    Editor.untrained(llama, step_size=0.05).save_pretrained(tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "editor.json").read_text()
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps(_saved_calibration(tmp_path / "ckpt")))
    # nothing eligible, a corrupt file, another editor's calibration: an error, editor.json untouched
    (tmp_path / "other").mkdir()
    (tmp_path / "corrupt.json").write_text("{not json")
    for args, match in ((["--from", str(saved), "--max-degenerate", "0.2"], "nothing chosen"),
                        (["--from", str(tmp_path / "corrupt.json")], "cannot read"),
                        (["--from", str(tmp_path / "missing.json")], "cannot read"),
                        (["--from", str(saved), "--max-degenerate", "2"], "max_degenerate")):
        code, _, err = run_main(capsys, "calibrate", "--editor", str(tmp_path / "ckpt"), "--write", *args)
        assert code != 0 and match in err, err
    code, _, err = run_main(capsys, "calibrate", "--editor", str(tmp_path / "other"), "--from", str(saved))
    assert code != 0 and "not of" in err
    assert (tmp_path / "ckpt" / "editor.json").read_text() == before
    # under a limit of 0.4 the second schedule is chosen and stored, with where it came from
    out = tmp_path / "again.json"
    code, stdout, err = run_main(capsys, "calibrate", "--editor", str(tmp_path / "ckpt"), "--from", str(saved),
                                 "--max-degenerate", "0.4", "--write", "--out", str(out))
    assert code == 0, err
    assert "not eligible" in stdout and "<- chosen" in stdout
    config = json.loads((tmp_path / "ckpt" / "editor.json").read_text())
    assert config["edit_schedule"] == {"steps": 6, "strength": 0.4, "until": 0.3}
    how = config["edit_schedule_calibration"]
    assert how["max_degenerate"] == 0.4 and how["rescored_from"] == str(saved)
    assert how["evaluated"] == "2026-12-07T00:00:00+00:00" and how["tasks"] == ["counterfact", "recent"]
    report = json.loads(out.read_text())
    assert report["chosen"] == config["edit_schedule"] and report["candidates"][0]["score"] is None
    assert Editor.from_pretrained(tmp_path / "ckpt", llama).schedule == EditSchedule(6, 0.4, until=0.3)
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "at most 40% degenerate edits" in card and "until the target's probability reaches 0.3" in card
    assert "8x0.3u0.5: not eligible" in card
    # saved before calibrations recorded their command: an equivalent one is recorded
    assert how["evaluated_by"] == (f"python -m instructedit calibrate --quant 4bit --editor {tmp_path / 'ckpt'} "
                                   f"--data data --tasks counterfact,recent --split val --limit 50 --seed 0 "
                                   f"--schedules 8x0.3u0.5,6x0.4u0.3 --out {saved}")


@pytest.mark.parametrize("args,match", [
    (["--schedules", "1x0"], "edit strength"),
    (["--schedules", "1x1,1x1"], "repeat"),
    (["--editor", "gradient"], "not a checkpoint folder"),
])
def test_calibrate_command_refuses_bad_input(capsys, tiny_llama_dir, tmp_path, args, match):
    Editor.untrained(load_backbone(str(tiny_llama_dir), device="cpu"), step_size=0.05).save_pretrained(tmp_path / "ckpt")
    base = ["calibrate", "--model", str(tiny_llama_dir), "--editor", str(tmp_path / "ckpt"), "--data", str(tmp_path)]
    code, _, err = run_main(capsys, *base, *args)
    assert code != 0 and match in err
    assert "edit_schedule" not in json.loads((tmp_path / "ckpt" / "editor.json").read_text())


def test_model_card_states_the_schedule(llama, tmp_path):
    from instructedit.editing.checkpoint import write_edit_schedule
    from instructedit.train.card import render_card

    Editor.untrained(llama, step_size=0.5).save_pretrained(tmp_path / "ckpt")
    assert "Edit schedule" not in render_card(tmp_path / "ckpt")
    write_edit_schedule(tmp_path / "ckpt", {"steps": 2, "strength": 1.5},
                        {"split": "val", "tasks": ["counterfact"], "limit": 50, "seed": 0,
                         "quantization": "4bit", "min_fluency": 0.95, "scores": {"1x1": 0.5, "2x1.5": 0.6},
                         "command": "python -m instructedit calibrate --editor ckpt --write"})
    card = render_card(tmp_path / "ckpt")
    assert "in 2 pass(es)" in card and "strength 1.5" in card and "2x1.5: 0.600" in card
    assert "python -m instructedit calibrate --editor ckpt --write" in card


def test_eval_steps_with_an_editor_that_edits_from_wrapped_and_plain(capsys, llama, tiny_llama_dir, tmp_path):
    from instructedit.editing.mend import EditorConfig, MendNetwork

    config = EditorConfig(rank=8, n_blocks=1, init_lr=0.02, normalize=False, edit_from="wrapped+plain")
    network = MendNetwork(Editor.module_shapes(llama, llama.edited_module_names()), config)
    Editor(llama, network, use_instructions=True, patch_rank=None).save_pretrained(tmp_path / "ckpt")
    runs = [run_main(capsys, "eval", "--model", str(tiny_llama_dir), "--editor", str(tmp_path / "ckpt"),
                     "--data", str(DATA / "easyedit_cf.json"), "--json", "--no-progress", "--no-plain",
                     "--edit-steps", steps) for steps in ("1", "2")]
    assert all(code == 0 for code, _, _ in runs), [err for _, _, err in runs]
    one, two = (json.loads(out) for _, out, _ in runs)
    assert two["edit_schedule"]["steps"] == 2 and two["target_prob_post"] > one["target_prob_post"]


def test_results_cache_and_checkpoint_card_follow_the_schedule(llama, tmp_path):
    from instructedit.editing.checkpoint import write_edit_schedule
    from instructedit.evaluate.config import ResultsConfig
    from instructedit.evaluate.results_data import RunSpec
    from instructedit.evaluate.run_store import ResultsRunner, checkpoint_card

    Editor.untrained(llama, step_size=0.5).save_pretrained(tmp_path / "ckpt")
    runner = ResultsRunner(ResultsConfig(data=str(tmp_path), cache_dir=str(tmp_path / "cache")))
    spec = RunSpec("InstructEdit", "counterfact", str(tmp_path / "ckpt"))
    before = runner._cache_file(spec)
    assert checkpoint_card(str(tmp_path / "ckpt"))["edit_schedule"] is None
    write_edit_schedule(tmp_path / "ckpt", {"steps": 2, "strength": 0.75})
    assert runner._cache_file(spec) != before  # a run cached under the old schedule is not reused
    assert checkpoint_card(str(tmp_path / "ckpt"))["edit_schedule"] == {"steps": 2, "strength": 0.75}


def _subject_keyed_checkpoint(llama, path):
    from instructedit.editing.mend import EditorConfig, MendNetwork

    config = EditorConfig(rank=8, n_blocks=1, init_lr=0.5, normalize=False, key_on="subject")
    network = MendNetwork(Editor.module_shapes(llama, llama.edited_module_names()), config)
    Editor(llama, network, use_instructions=False, patch_rank=None).save_pretrained(path)


def test_library_edit_without_a_subject_keys_on_the_guess(llama, tmp_path):
    """``Editor.edit`` (README's library example passes no subject) keys a subject-keyed editor on
    the guessed subject, records it in the edit, and leaves a request with a subject alone."""
    _subject_keyed_checkpoint(llama, tmp_path / "ckpt")
    editor = Editor.from_pretrained(tmp_path / "ckpt", llama)
    plain = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome"))
    named = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome", subject="Eiffel Tower"))
    other = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome", subject="located"))
    assert plain.request.subject == "Eiffel Tower" and other.request.subject == "located"
    for name, layer in plain.patch.layers.items():
        assert torch.equal(layer.u, named.patch.layers[name].u) and torch.equal(layer.d, named.patch.layers[name].d)
    assert any(not torch.equal(layer.u, other.patch.layers[name].u) for name, layer in plain.patch.layers.items())
    nothing = editor.edit(EditRequest("what is up", "Rome"))   # nothing to guess: every token, as before
    assert nothing.request.subject is None


def test_edit_command_keys_a_subject_keyed_editor_on_the_named_or_guessed_subject(capsys, llama,
                                                                                   tiny_llama_dir, tmp_path):
    """The command line makes the edit the studio makes: a subject-keyed editor gets the subject
    (``--subject``, else the studio's guess from the prompt), never every token."""
    _subject_keyed_checkpoint(llama, tmp_path / "ckpt")
    base = ["edit", "--model", str(tiny_llama_dir), "--editor", str(tmp_path / "ckpt"),
            "--prompt", "The Eiffel Tower is located in", "--target", "Rome", "--max-new-tokens", "2"]
    reports = {}
    for name, extra in (("guessed", []), ("named", ["--subject", "Eiffel Tower"]),
                        ("other", ["--subject", "located"])):
        code, out, err = run_main(capsys, *base, *extra, "--json")
        assert code == 0, err
        reports[name] = json.loads(out)
    assert reports["guessed"]["subject"] == reports["named"]["subject"] == "Eiffel Tower"
    assert reports["guessed"]["keyed_on_subject"] is True
    post = {k: r["target_scores"]["raw"]["post"]["probability"] for k, r in reports.items()}
    assert post["guessed"] == post["named"] != post["other"]  # the key decides the update
    code, out, _ = run_main(capsys, *base)
    assert code == 0 and "subject   'Eiffel Tower' (the update is keyed on its tokens)" in out
