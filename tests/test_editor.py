"""The editor: an identity network is one exact gradient step; quantized edits; request validation."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from instructedit.editing.editor import MAX_PROMPT_CHARS, EditError, Editor, EditRequest
from instructedit.editing.patches import PatchEngine
from instructedit.model.backbone import load_backbone
from instructedit.scoring import full_model_answer_logits, score_answers, tokenize_answers


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), device="cpu")


def _target_prob(backbone, prompt, target, patch=None) -> float:
    batch = tokenize_answers(backbone.tokenizer, [prompt], [target]).to(backbone.device)
    with torch.no_grad(), PatchEngine.activate(patch):
        return float(score_answers(full_model_answer_logits(backbone.model, batch), batch).probability[0])


def _autograd_weight_grads(backbone, names, prompt, target) -> dict[str, torch.Tensor]:
    """d(mean target NLL)/dW, (out, in), on an independent float copy of the model."""
    model = AutoModelForCausalLM.from_pretrained(backbone.source, dtype=torch.float32)
    model.requires_grad_(False)
    for name in names:
        model.get_submodule(name).weight.requires_grad_(True)
    batch = tokenize_answers(backbone.tokenizer, [prompt], [target])
    score_answers(full_model_answer_logits(model, batch), batch).mean_nll.sum().backward()
    return {n: backbone.adapter.weight_grad_out_in(model.get_submodule(n)) for n in names}


@pytest.mark.parametrize("family,cls", [("llama", "Linear"), ("gpt2", "Conv1D")])
def test_identity_editor_is_one_gradient_step(tiny_llama_dir, tiny_gpt2_dir, family, cls):
    folder = tiny_llama_dir if family == "llama" else tiny_gpt2_dir
    backbone = load_backbone(str(folder), device="cpu")
    eta = 0.5
    editor = Editor.untrained(backbone, step_size=eta, normalize=False)
    request = EditRequest("The Eiffel Tower is located in", "Rome Italy")
    edit = editor.edit(request)
    assert edit.wrapped_input == request.prompt  # custom task, no instruction: unwrapped
    names = backbone.edited_module_names()
    assert sorted(edit.patch.layers) == sorted(names)
    assert all(type(backbone.module(n)).__name__ == cls for n in names)
    grads = _autograd_weight_grads(backbone, names, edit.wrapped_input, request.target)
    for name in names:
        expected = -eta * grads[name]
        assert expected.abs().max() > 1e-3, f"{name}: gradient too small for a meaningful check"
        delta = edit.patch.layers[name].delta_weight()
        assert delta.shape == expected.shape
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("quant", ["8bit", "4bit"])
def test_quantized_edit_raises_target_probability(tiny_model_dir, quant):
    backbone = load_backbone(str(tiny_model_dir), quant, device="cpu")
    editor = Editor.untrained(backbone, step_size=2.0)
    prompt, target = "The Eiffel Tower is located in", "Rome"
    edit = editor.edit(EditRequest(prompt, target))
    before, after = _target_prob(backbone, prompt, target), _target_prob(backbone, prompt, target, edit.patch)
    assert after > before * 10, (before, after)
    assert _target_prob(backbone, prompt, target) == before  # nothing stays active


@pytest.mark.parametrize("prompt,target,match", [
    ("", "Rome", "prompt is empty"),
    ("   \n\t ", "Rome", "prompt is empty"),
    ("The capital of France is", "  ", "target is empty"),
    ("x" * (MAX_PROMPT_CHARS + 1), "Rome", "too long"),
    ("The capital of France is", "Paris Rome " * 90, "tokens long"),
    ("The capital\x00 of France is", "Rome", "control characters"),
    ("The capital of France is", "\x1b[31mRome", "control characters"),
    ("The capital of France is\x7f\x08", "Rome", "control characters"),
])
def test_bad_requests_raise_edit_error(llama, prompt, target, match):
    editor = Editor.untrained(llama, step_size=0.5)
    with pytest.raises(EditError, match=match):
        editor.edit(EditRequest(prompt, target))


@pytest.mark.parametrize("prompt,target", [
    ("🚀 The Eiffel Tower 🗼 is located in", "Rome 🇮🇹"),
    ("برج إيفل يقع في", "روما"),
    ("Der Eiffelturm 位于 Париж и", "東京"),
    ("e\u0301 combining and \u200f RTL mark in", "Ελλάδα"),
])
def test_unicode_requests_work(llama, prompt, target):
    editor = Editor.untrained(llama, step_size=2.0)
    edit = editor.edit(EditRequest(prompt, target))
    edit.patch.check_finite()
    assert edit.wrapped_input == prompt.strip()
    assert _target_prob(llama, prompt, target, edit.patch) > _target_prob(llama, prompt, target)


def test_instruction_wrapping(llama):
    editor = Editor.untrained(llama, step_size=0.5)
    edit = editor.edit(EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact",
                                   instruction="heldout"))
    assert edit.wrapped_input.startswith("Task: counterfact\nDescription: ")
    assert edit.wrapped_input.endswith("\nInput: The Eiffel Tower is located in")
    request = EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact", instruction=0)
    assert request.wrap("Where is the Eiffel Tower?").endswith("Input: Where is the Eiffel Tower?")
    unwrapped = Editor.untrained(llama, step_size=0.5, use_instructions=False).edit(request)
    assert unwrapped.wrapped_input == request.prompt


def test_load_editor_names_every_kind_of_editor(tiny_llama_dir, tmp_path):
    from instructedit.editing.editors import load_editor
    from instructedit.editing.rome import RomeEditor
    from instructedit.model.backbone import load_backbone

    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    assert load_editor("unedited", backbone) is None
    step = load_editor("gradient", backbone, step_size=0.25)
    assert step.patch_rank is None and float(step.network.log_lr.exp()[0]) == pytest.approx(0.25)
    assert isinstance(load_editor("ROME", backbone), RomeEditor)
    assert load_editor("rome:identity", backbone).config.covariance == "identity"
    with pytest.raises(ValueError, match="rome:identity"):
        load_editor("rome:typo", backbone)
    step.save_pretrained(tmp_path / "ck")
    loaded = load_editor(str(tmp_path / "ck"), backbone, patch_rank=2)
    assert loaded.patch_rank == 2 and loaded.module_names == step.module_names
    with pytest.raises(ValueError, match="positive"):
        load_editor("gradient", backbone, step_size=0)


@pytest.mark.parametrize("use_instructions", [True, False])
def test_edit_from_wrapped_and_plain_sums_both_gradient_steps(llama, use_instructions):
    """An editor that edits from the wrapped input and the prompt as typed makes the sum of the
    two gradient steps; without instructions the two are one text, counted once."""
    from instructedit.editing.mend import EditorConfig, MendNetwork

    eta = 0.5
    names = llama.edited_module_names()
    config = EditorConfig(rank=8, n_blocks=1, init_lr=eta, normalize=False, edit_from="wrapped+plain")
    network = MendNetwork(Editor.module_shapes(llama, names), config)
    editor = Editor(llama, network, use_instructions=use_instructions, patch_rank=None)
    request = EditRequest("The Eiffel Tower is located in", "Rome", task="counterfact", instruction=0)
    edit = editor.edit(request)
    plain = request.prompt
    assert (edit.wrapped_input != plain) == use_instructions
    texts = [edit.wrapped_input, plain] if use_instructions else [plain]
    grads = [_autograd_weight_grads(llama, names, text, request.target) for text in texts]
    for name in names:
        expected = -eta * sum(g[name] for g in grads)
        torch.testing.assert_close(edit.patch.layers[name].delta_weight(), expected,
                                   atol=1e-5, rtol=0, msg=name)


def test_join_halves_sums_the_paired_rows():
    from instructedit.editing.patches import LayerPatch, Patch

    torch.manual_seed(0)
    u, d = torch.randn(4, 3, 5), torch.randn(4, 3, 2)
    joined = Patch({"m": LayerPatch(u, d, torch.tensor(0.5))}).join_halves()
    assert joined.layers["m"].u.shape == (2, 6, 5)
    for row in range(2):
        single = LayerPatch(joined.layers["m"].u[row], joined.layers["m"].d[row], torch.tensor(0.5))
        expected = sum(0.5 * d[r].t() @ u[r] for r in (row, row + 2))
        torch.testing.assert_close(single.delta_weight(), expected)
    with pytest.raises(ValueError, match="even number"):
        Patch({"m": LayerPatch(u[:3], d[:3], torch.tensor(1.0))}).join_halves()
