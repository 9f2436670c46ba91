"""Re-keying an update on the edit's own keys (instructedit/editing/rekey.py)."""
from __future__ import annotations

import pytest
import torch

from instructedit.editing.patches import LayerPatch, Patch
from instructedit.editing.rekey import rekey_layer, rekey_patch


def _second_moment(n_in: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4 * n_in, n_in, generator=g)
    return a.T @ a / a.shape[0] + 0.1 * torch.eye(n_in)


def test_the_response_on_the_edit_keys_is_kept():
    g = torch.Generator().manual_seed(1)
    n_in, rank = 16, 4
    u, keys = torch.randn(rank, n_in, generator=g), torch.randn(3, n_in, generator=g)
    inverse = torch.linalg.inv(_second_moment(n_in))
    out = rekey_layer(u, keys, inverse)
    assert out.shape == u.shape
    torch.testing.assert_close(keys @ out.T, keys @ u.T, rtol=1e-4, atol=1e-4)


def test_inputs_unlike_the_keys_in_the_whitened_metric_get_no_response():
    g = torch.Generator().manual_seed(2)
    n_in = 12
    cov = _second_moment(n_in, 3)
    inverse = torch.linalg.inv(cov)
    u, keys = torch.randn(2, n_in, generator=g), torch.randn(2, n_in, generator=g)
    out = rekey_layer(u, keys, inverse)
    # x with x C^-1 k = 0 for both keys: the re-keyed update leaves it alone, the original did not
    basis = torch.linalg.svd(keys @ inverse).Vh[2:]          # orthogonal to C^-1 k_i
    x = torch.randn(5, n_in - 2, generator=g) @ basis
    assert (x @ out.T).abs().max() < 1e-4 < (x @ u.T).abs().max()


def test_identity_metric_projects_onto_the_keys_span_and_repeated_keys_are_fine():
    g = torch.Generator().manual_seed(4)
    n_in = 10
    u, key = torch.randn(3, n_in, generator=g), torch.randn(1, n_in, generator=g)
    keys = torch.cat([key, key, 2 * key, torch.zeros(1, n_in)])   # rank one, a zero row ignored
    out = rekey_layer(u, keys, torch.eye(n_in))
    direction = key / key.norm()
    torch.testing.assert_close(out, (u @ direction.T) @ direction, rtol=1e-4, atol=1e-5)
    assert torch.equal(rekey_layer(u, torch.zeros(2, n_in), torch.eye(n_in)), u)  # no keys: unchanged


def test_rekey_patch_rekeys_each_row_on_its_own_keys_and_keeps_d():
    g = torch.Generator().manual_seed(5)
    n_in, n_out = 8, 6
    u, d = torch.randn(2, 3, n_in, generator=g), torch.randn(2, 3, n_out, generator=g)
    patch = Patch({"a": LayerPatch(u, d, torch.tensor(0.5)), "b": LayerPatch(u.clone(), d.clone(), torch.tensor(1.0))})
    keys = {"a": [torch.randn(2, n_in, generator=g), torch.randn(1, n_in, generator=g)]}
    out = rekey_patch(patch, keys, {"a": torch.eye(n_in), "b": torch.eye(n_in)})
    assert torch.equal(out.layers["b"].u, u) and torch.equal(out.layers["a"].d, d)   # no keys for b
    for row in range(2):
        torch.testing.assert_close(out.layers["a"].u[row], rekey_layer(u[row], keys["a"][row], torch.eye(n_in)))
    with pytest.raises(ValueError, match="batched"):
        rekey_patch(Patch({"a": LayerPatch(u[0], d[0], torch.tensor(1.0))}), {"a": [keys["a"][0]]},
                    {"a": torch.eye(n_in)})


# ----- an editor that re-keys ----------------------------------------------------------------------
def _span_residual(rows: torch.Tensor, keys: torch.Tensor) -> float:
    """Largest share of a row of ``rows`` outside the span of ``keys``."""
    basis = torch.linalg.svd(keys.double(), full_matrices=False)
    kept = basis.Vh[basis.S > basis.S[0] * 1e-6]
    outside = rows.double() - (rows.double() @ kept.T) @ kept
    return float((outside.norm(dim=-1) / rows.double().norm(dim=-1).clamp_min(1e-12)).max())


def test_a_rekeyed_edit_answers_its_subject_in_its_inputs_and_contexts(llama, tmp_path):
    """With ``rekey`` each module's update only reads inputs in the span of the edit's keyed inputs
    (identity metric here: the tiny editor has no preconditioners): the subject's tokens in the
    edit input, the typed prompt and the prompt after each context prefix. The first edited module
    sees those inputs unchanged by the edit, so they can be recomputed here."""
    from instructedit.editing.contexts import prefixed
    from instructedit.editing.editor import Editor, EditRequest, EditSchedule, rekey_contexts
    from instructedit.editing.keying import subject_token_span
    from instructedit.editing.rekey import capture_module_inputs

    from .test_edit_schedule import _subject_keyed_checkpoint

    _subject_keyed_checkpoint(llama, tmp_path / "ckpt")
    editor = Editor.from_pretrained(tmp_path / "ckpt", llama).with_patch_rank(None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a transform that is not the identity, as a trained one is not
        for param in editor.network.transforms.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=g))
    request = EditRequest("The Eiffel Tower is located in", "Rome", subject="Eiffel Tower")
    plain = editor.edit(request)
    rekeyed_editor = editor.with_schedule(EditSchedule(1, 1.0, rekey=True))
    rekeyed = rekeyed_editor.edit(request)
    contexts = rekey_contexts(llama, rekeyed_editor.schedule)
    assert len(contexts) == 5 and rekey_contexts(llama, editor.schedule) == ()
    first = editor.module_names[0]
    keys = []
    for text in [request.prompt, *(prefixed(request.prompt, c) for c in contexts)]:
        enc = llama.tokenizer(text, return_tensors="pt")
        start, stop = subject_token_span(llama.tokenizer, text, "Eiffel Tower")
        x = capture_module_inputs(llama.model, [first], enc["input_ids"], enc["attention_mask"])[first][0]
        keys.append(x[start:stop])
    keys = torch.cat(keys)
    assert _span_residual(rekeyed.patch.layers[first].u, keys) < 1e-4
    assert _span_residual(plain.patch.layers[first].u, keys) > 1e-2   # the learned transform leaves it
    assert rekeyed.request.subject == "Eiffel Tower"


def test_rekey_travels_with_the_schedule_checkpoint_and_command_line(llama, tiny_llama_dir, tmp_path, capsys):
    import json

    from instructedit.editing.checkpoint import write_edit_schedule
    from instructedit.editing.editor import Editor, EditSchedule
    from instructedit.evaluate.calibration import parse_schedule

    from .cli_helpers import run_main
    from .test_edit_schedule import _subject_keyed_checkpoint

    assert parse_schedule("4x0.4r") == EditSchedule(4, 0.4, rekey=True) and parse_schedule("2x1") == EditSchedule(2, 1.0)
    assert EditSchedule(4, 0.4, True).short() == "4x0.4r" and EditSchedule(4, 0.4).to_dict() == {"steps": 4, "strength": 0.4}
    assert EditSchedule.from_dict({"steps": 4, "strength": 0.4, "rekey": True}).rekey
    assert "re-keyed" in EditSchedule(1, 1.0, True).label() and not EditSchedule(1, 1.0, True).is_default
    with pytest.raises(ValueError, match="rekey must be true or false"):
        EditSchedule.from_dict({"steps": 1, "rekey": "yes"})
    _subject_keyed_checkpoint(llama, tmp_path / "ckpt")
    write_edit_schedule(tmp_path / "ckpt", EditSchedule(2, 0.5, True).to_dict())
    assert Editor.from_pretrained(tmp_path / "ckpt", llama).schedule == EditSchedule(2, 0.5, True)
    from instructedit.train.card import render_card
    assert "each re-keyed on the edit's own keys" in render_card(tmp_path / "ckpt")
    base = ["edit", "--model", str(tiny_llama_dir), "--editor", str(tmp_path / "ckpt"), "--prompt",
            "The Eiffel Tower is located in", "--target", "Rome", "--max-new-tokens", "2"]
    code, out, err = run_main(capsys, *base, "--json")
    assert code == 0, err
    assert json.loads(out)["edit_schedule"] == {"steps": 2, "strength": 0.5, "rekey": True}
    code, out, err = run_main(capsys, *base, "--edit-rekey", "off", "--json")
    assert code == 0 and json.loads(out)["edit_schedule"] == {"steps": 2, "strength": 0.5}
    code, out, _ = run_main(capsys, *base)
    assert code == 0 and "each re-keyed on the edit's own keys" in out
