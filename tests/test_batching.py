"""Cross-session batching (instructedit/serving/batcher.py) on the tiny models: each request's rows
carry its own edits and equal its run alone (bitwise at equal widths, within the stated tolerance in
a batch of mixed widths); calls are really batched; the extra-padding cap holds; a bad request
fails alone; the unedited model stays exact; the studio, app.py and the stress tool wire it in."""
from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import pytest
import torch

import app as app_module
from instructedit.editing.editor import Editor, EditRequest
from instructedit.editing.patches import LayerPatch, Patch, PatchEngine
from instructedit.measuring.probing import generate_under
from instructedit.model.backbone import load_backbone
from instructedit.model.generation import GenerationConfig, generate
from instructedit.serving.batcher import (
    DEFAULT_MAX_EXTRA_PAD,
    LOGIT_TOLERANCE,
    PADDED_LOGIT_TOLERANCE,
    GenerationBatcher,
    RequestRows,
    current_batcher,
    request_rows_patch,
)
from instructedit.web.config import Limits
from instructedit.web.service import EditService
from tests import stress

PROMPT = "The Eiffel Tower is located in"
TOKENS = 8


@pytest.fixture(scope="module")
def llama4(tiny_llama_dir):
    return load_backbone(str(tiny_llama_dir), "4bit", device="cpu")


@pytest.fixture(scope="module")
def gpt24(tiny_gpt2_dir):
    return load_backbone(str(tiny_gpt2_dir), "4bit", device="cpu")


def make_edits(backbone, n: int = 3) -> list[Patch]:
    """``n`` different edits of the same prompt (a strong, unkeyed gradient step)."""
    step = 0.5 if backbone.model.dtype == torch.float32 else 2.0
    editor = Editor.untrained(backbone, step_size=step)
    return [editor.edit(EditRequest(PROMPT, target)).patch for target in ("Rome", "Berlin", "London")[:n]]


def alone(backbone, stack: Sequence[Patch], texts: Sequence[str], tokens: int = TOKENS) -> list[str]:
    """What the code without a batcher generates."""
    with PatchEngine.activate(list(stack)):
        return generate(backbone, list(texts), GenerationConfig(max_new_tokens=tokens))


class Counting:
    """A generate function that records the prompts of every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, backbone, texts, config):
        with self._lock:
            self.calls.append(len(texts))
        return generate(backbone, texts, config)


class Recording:
    """A generate function that records, per call, its prompts, every step's logits (rows, steps,
    vocab) and the attention mask and position ids of its prompt pass. Calls run one at a time
    (its forward hook sees the shared model)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self._lock = threading.Lock()

    def __call__(self, backbone, texts, config):
        record = {"texts": list(texts), "logits": []}

        def hook(module, args, kwargs, output):
            if "positions" not in record:
                mask = kwargs.get("attention_mask")
                record["mask"] = None if mask is None else mask.clone()
                record["positions"] = kwargs["position_ids"].clone()
            record["logits"].append(output.logits[:, -1].float().clone())

        with self._lock:
            handle = backbone.model.register_forward_hook(hook, with_kwargs=True)
            try:
                outputs = generate(backbone, texts, config)
            finally:
                handle.remove()
            record["logits"] = torch.stack(record["logits"], dim=1)
            record["outputs"] = outputs
            self.calls.append(record)
        return outputs


def width(backbone, text: str) -> int:
    return len(backbone.tokenizer(text)["input_ids"])


def run_threads(work: Callable[[int], object], n: int, timeout: float = 120) -> tuple[dict, dict]:
    """``work(i)`` in ``n`` threads started together; (results, errors) by index."""
    results, errors = {}, {}
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - checked by the caller
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(t.is_alive() for t in threads), "a thread hangs"
    return results, errors


def submit_together(batcher: GenerationBatcher, requests: Sequence[tuple[Sequence[Patch], list[str]]],
                    tokens: int = TOKENS) -> tuple[dict, dict]:
    """Every request from its own announced caller, all at once (every caller announced first)."""
    announced = threading.Barrier(len(requests))

    def work(i: int) -> list[str]:
        with batcher.client():
            announced.wait(timeout=30)
            return batcher.generate(requests[i][0], requests[i][1], tokens)
    return run_threads(work, len(requests))


# ----- the per-request edits of a batch -----------------------------------------------------------
def test_each_request_rows_get_its_own_stack_exactly(backbone):
    e = make_edits(backbone)
    requests = [(1, [e[0]]), (2, [e[0], e[1]]), (1, []), (1, [e[2], e[1], e[0]]), (1, [e[1]])]
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (sum(rows for rows, _ in requests), 7))
    with torch.no_grad():
        with PatchEngine.activate(request_rows_patch(requests)):
            batched = backbone.model(input_ids=ids).logits
        start, alone_logits = 0, []
        for rows, stack in requests:
            with PatchEngine.activate(stack):
                alone_logits.append(backbone.model(input_ids=ids[start:start + rows]).logits)
            start += rows
    # the prompt pass: bitwise, edited rows and the unedited row (zero delta) alike
    assert torch.equal(batched, torch.cat(alone_logits))
    with torch.no_grad():
        unedited = backbone.model(input_ids=ids).logits
    assert torch.equal(batched[3], unedited[3])  # the row without edits: the unedited model
    assert all(not torch.equal(batched[i], unedited[i]) for i in (0, 1, 2, 4, 5))  # the edits are visible


def test_rows_patch_refuses_what_it_cannot_keep_exact():
    u, d = torch.ones(2, 1, 4), torch.ones(2, 1, 3)
    batched = Patch({"m": LayerPatch(u, d, torch.ones(()))})
    with pytest.raises(ValueError, match="unbatched"):
        request_rows_patch([(2, [batched])])
    rows = RequestRows(((0, 1, None), (1, 3, None)), 3)
    assert rows.batched and rows.output_delta(torch.ones(3, 2, 4)).shape == (3, 2, 3)
    with pytest.raises(ValueError, match="batch of 3 rows"):
        rows.output_delta(torch.ones(2, 2, 4))


# ----- batching concurrent requests -------------------------------------------------------------
@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_concurrent_requests_are_batched_and_each_equals_its_run_alone(request, quant):
    """The exact rule (``max_extra_pad=0``): only equal padded widths meet; texts bitwise equal."""
    backbone = request.getfixturevalue("llama" if quant == "none" else "llama4")
    e = make_edits(backbone)
    other = "Rome is in"                      # another token width: its own batch
    tokenizer = backbone.tokenizer
    assert len(tokenizer(other)["input_ids"]) != len(tokenizer(PROMPT)["input_ids"])
    requests = [([], [PROMPT]),                           # an observer: no edits, runs alone
                ([e[0]], [PROMPT]), ([e[1]], [PROMPT]), ([e[0], e[1]], [PROMPT]),
                ([e[2], e[0], e[1]], [PROMPT]),            # 0, 1, 2 and 3 stacked edits
                ([e[1]], [other]),
                ([e[2]], [PROMPT, other]), ([e[0]], [other, PROMPT])]  # padded to the same width
    expected = [alone(backbone, stack, texts) for stack, texts in requests]
    assert len({tuple(x) for x in expected[:5]}) >= 3, expected  # the edits are visible
    counting = Counting()
    batcher = GenerationBatcher(backbone, window_ms=5000, max_extra_pad=0, generate_fn=counting)
    results, errors = submit_together(batcher, requests)
    assert errors == {}
    assert [results[i] for i in range(len(requests))] == expected  # bitwise the same texts
    stats = batcher.stats()
    assert len(counting.calls) < len(requests) and stats["batches"] >= 2
    assert max(counting.calls) >= 4  # the four one-prompt edited requests in one call
    assert sorted(counting.calls) == sorted([1, 4, 1, 4])  # observer; 1-4 edits; other width; padded pair
    assert stats["requests"] == len(requests) and stats["fallbacks"] == 0
    assert stats["mixed_width_batches"] == stats["extra_padded_rows"] == stats["largest_extra_pad"] == 0
    assert batcher.close(timeout=10)


@pytest.mark.parametrize("name", ["llama", "gpt2", "llama4", "gpt24"])
def test_mixed_widths_share_a_batch_within_the_stated_tolerance(request, name):
    """Requests of different padded widths run as one left-padded batch: each row's mask and
    positions are those of its run alone (extra padding masked, positions from the mask), every
    step's logits within PADDED_LOGIT_TOLERANCE of its run alone; the observer (no edits) runs
    alone, bitwise. Texts: equal in float32; in bf16 a token may flip only at a near tie (one does
    on 4-bit GPT-2: "Madrid is the capital of", 7th token, the run alone's two best logits 2.234
    and 2.219, one bf16 step apart)."""
    backbone = request.getfixturevalue(name)
    tolerance = PADDED_LOGIT_TOLERANCE[backbone.model.dtype]
    e = make_edits(backbone)
    requests = [([], [PROMPT]),                                           # the observer
                ([e[0]], ["The capital of France is"]),
                ([e[1]], [PROMPT]),
                ([e[0], e[1]], ["The mother tongue of Danielle Darrieux is"]),
                ([e[2]], ["Madrid is the capital of", "What do you think of cats ?"]),  # padded alone
                ([e[1], e[2], e[0]], ["piano guitar Sega BBC"])]
    widths = [max(width(backbone, t) for t in texts) for _, texts in requests]
    edited = range(1, len(requests))
    assert len({widths[i] for i in edited}) == len(edited)  # every edited request its own width
    largest = max(widths[i] for i in edited) - min(widths[i] for i in edited)
    assert 0 < largest <= DEFAULT_MAX_EXTRA_PAD
    reference = Recording()
    alone_calls = []
    for stack, texts in requests:
        with PatchEngine.activate(list(stack)):
            reference(backbone, texts, GenerationConfig(max_new_tokens=TOKENS))
        alone_calls.append(reference.calls[-1])
    assert len({tuple(alone_calls[i]["outputs"]) for i in (0, 2)}) == 2  # the edit is visible

    recording = Recording()
    batcher = GenerationBatcher(backbone, window_ms=5000, generate_fn=recording)
    results, errors = submit_together(batcher, requests)
    assert errors == {}
    assert sorted(len(c["texts"]) for c in recording.calls) == [1, 6]  # observer alone; one batch
    stats = batcher.stats()
    assert stats["batches"] == stats["mixed_width_batches"] == 1 and stats["batched_requests"] == 5
    assert stats["largest_extra_pad"] == largest and stats["extra_padded_rows"] == 5
    observer = next(c for c in recording.calls if len(c["texts"]) == 1)
    assert results[0] == observer["outputs"] == alone_calls[0]["outputs"]
    assert torch.equal(observer["logits"], alone_calls[0]["logits"])  # rule 3: bitwise
    batch = next(c for c in recording.calls if len(c["texts"]) == 6)
    batch_width = batch["positions"].shape[1]
    assert batch_width == max(widths)
    worst, compared, flipped = 0.0, 0, []
    for i in edited:
        own = alone_calls[i]
        for r, text in enumerate(requests[i][1]):
            row = batch["texts"].index(text)
            assert results[i][r] == batch["outputs"][row]  # each caller got exactly its rows
            extra = batch_width - widths[i]
            own_mask = own["mask"][r] if own["mask"] is not None else torch.ones(widths[i], dtype=torch.long)
            assert torch.equal(batch["mask"][row], torch.cat([own_mask.new_zeros(extra), own_mask]))
            assert torch.equal(batch["positions"][row, extra:], own["positions"][r])
            for step, theirs in enumerate(own["logits"][r]):
                mine = batch["logits"][row, step]
                worst, compared = max(worst, (mine - theirs).abs().max().item()), compared + 1
                if mine.argmax() != theirs.argmax():  # later steps continue other tokens
                    top = theirs.topk(2).values
                    assert top[0] - top[1] <= 2 * tolerance, (i, r, step)  # only at a near tie
                    flipped.append(text)
                    break
            assert (results[i][r] == own["outputs"][r]) == (text not in flipped), text
    assert compared >= 5 * TOKENS and worst <= tolerance, worst
    assert len(flipped) <= (0 if backbone.model.dtype == torch.float32 else 1), flipped
    assert batcher.close(timeout=10)


def test_the_extra_padding_cap_keeps_far_widths_apart(llama):
    """A request that would be padded more than ``max_extra_pad`` beyond its run alone gets a batch
    of its own; the default cap puts the three together; 0 keeps every width apart."""
    e = make_edits(llama)
    requests = [([e[0]], ["Rome is in"]), ([e[1]], ["Berlin is in"]), ([e[2]], ["The capital of France is"])]
    a, b, c = (width(llama, texts[0]) for _, texts in requests)
    cap = 4
    assert 0 < b - a <= cap < c - b and c - a <= DEFAULT_MAX_EXTRA_PAD
    expected = [alone(llama, stack, texts) for stack, texts in requests]
    for max_extra_pad, calls in ((cap, [1, 2]), (DEFAULT_MAX_EXTRA_PAD, [3]), (0, [1, 1, 1])):
        recording = Recording()
        batcher = GenerationBatcher(llama, window_ms=5000, max_extra_pad=max_extra_pad,
                                    generate_fn=recording)
        results, errors = submit_together(batcher, requests)
        assert errors == {} and [results[i] for i in range(3)] == expected
        assert sorted(len(call["texts"]) for call in recording.calls) == calls, max_extra_pad
        for call in recording.calls:  # no row padded more than the cap beyond its run alone
            own = [width(llama, t) for t in call["texts"]]
            assert max(own) - min(own) <= max_extra_pad
        assert batcher.stats()["largest_extra_pad"] == {cap: b - a, DEFAULT_MAX_EXTRA_PAD: c - a, 0: 0}[max_extra_pad]
    with pytest.raises(ValueError):
        GenerationBatcher(llama, max_extra_pad=-1)


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_every_batched_step_is_within_the_stated_tolerance(request, quant):
    """Logits of every generated step of a batched row vs its request alone (module doc, rule 4)."""
    backbone = request.getfixturevalue("llama" if quant == "none" else "llama4")
    tolerance = LOGIT_TOLERANCE[backbone.model.dtype]
    e = make_edits(backbone)
    requests = [(1, [e[0]]), (1, [e[1]]), (2, [e[0], e[1]]), (1, [e[2]]), (1, [])]
    torch.manual_seed(1)
    ids = torch.randint(5, 300, (6, 9))
    settings = dict(max_new_tokens=10, do_sample=False, num_beams=1, temperature=None, top_p=None,
                    top_k=None, pad_token_id=backbone.tokenizer.pad_token_id,
                    return_dict_in_generate=True, output_logits=True)
    with torch.no_grad():
        with PatchEngine.activate(request_rows_patch(requests)):
            batched = backbone.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings)
        start, worst, compared = 0, 0.0, 0
        for rows, stack in requests:
            part = ids[start:start + rows]
            with PatchEngine.activate(stack):
                own = backbone.model.generate(input_ids=part, attention_mask=torch.ones_like(part), **settings)
            for r in range(rows):
                for step, logits in enumerate(own.logits):
                    mine = batched.logits[step][start + r].float()
                    theirs = logits[r].float()
                    worst = max(worst, (mine - theirs).abs().max().item())
                    compared += 1
                    if batched.sequences[start + r, 9 + step] != own.sequences[r, 9 + step]:
                        top = theirs.topk(2).values  # a token may change only at a near tie
                        assert top[0] - top[1] <= 2 * tolerance, (rows, r, step)
                        break
            start += rows
    assert compared >= 50 and worst <= tolerance, worst


@pytest.mark.parametrize("quant", ["none", "4bit"])
def test_unedited_rows_can_join_with_zero_factors(request, quant):
    backbone = request.getfixturevalue("llama" if quant == "none" else "llama4")
    e = make_edits(backbone, 2)
    requests = [([], [PROMPT]), ([e[0]], [PROMPT]), ([], [PROMPT]), ([e[1], e[0]], [PROMPT])]
    expected = [alone(backbone, stack, texts) for stack, texts in requests]
    counting = Counting()
    batcher = GenerationBatcher(backbone, window_ms=5000, batch_unedited=True, generate_fn=counting)
    results, errors = submit_together(batcher, requests)
    assert errors == {} and [results[i] for i in range(4)] == expected
    assert counting.calls == [4]
    # the default: unedited requests run alone, so the unedited model stays bitwise exact anywhere
    default = GenerationBatcher(backbone, window_ms=5000, generate_fn=(counting := Counting()))
    results, errors = submit_together(default, requests)
    assert errors == {} and [results[i] for i in range(4)] == expected
    assert sorted(counting.calls) == [1, 1, 2] and default.stats()["alone"] == 2


def test_a_failing_request_fails_alone(llama):
    e = make_edits(llama, 2)
    name, good = next(iter(e[0].layers.items()))
    broken = Patch({name: LayerPatch(torch.ones(1, good.u.shape[1] + 1), torch.ones(1, good.d.shape[1]),
                                     torch.ones(()))})  # wrong input width: its matmul fails
    requests = [([e[0]], [PROMPT]), ([broken], [PROMPT]), ([e[1]], [PROMPT]), ([e[1]], ["bad \ud800 text"]),
                ([e[0], e[1]], [PROMPT])]
    counting = Counting()
    batcher = GenerationBatcher(llama, window_ms=5000, generate_fn=counting)
    results, errors = submit_together(batcher, requests)
    assert set(errors) == {1, 3}
    assert isinstance(errors[1], RuntimeError)  # the broken patch's own error, in its own thread
    for i in (0, 2, 4):
        assert results[i] == alone(llama, *requests[i])
    assert batcher.stats()["fallbacks"] == 1  # the batch failed once; each request then ran alone
    # the batcher goes on serving
    results, errors = submit_together(batcher, [requests[0], requests[2]])
    assert errors == {} and results[0] == alone(llama, *requests[0])


def test_a_lone_caller_does_not_wait_and_close_is_clean(llama):
    e = make_edits(llama, 1)
    counting = Counting()
    batcher = GenerationBatcher(llama, window_ms=60_000, generate_fn=counting)
    start = time.perf_counter()
    with batcher.client():
        assert current_batcher() is batcher
        with batcher.client():  # nested: still one caller
            out = batcher.generate([e[0]], [PROMPT], TOKENS)
    assert time.perf_counter() - start < 30  # not the 60 s window: the only caller runs at once
    assert current_batcher() is None
    assert out == alone(llama, [e[0]], [PROMPT]) and counting.calls == [1]
    assert batcher.stats()["alone"] == 1 and batcher.stats()["batches"] == 0
    # an unannounced caller waits for companions; close() lets it run at once
    results, errors = {}, {}

    def waiting() -> None:
        try:
            results[0] = batcher.generate([e[0]], [PROMPT], TOKENS)
        except BaseException as exc:  # noqa: BLE001
            errors[0] = exc

    thread = threading.Thread(target=waiting)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive() and not results  # waiting in the window
    assert batcher.close(timeout=60)
    thread.join(timeout=60)
    assert errors == {} and results[0] == out
    assert batcher.generate([e[0]], [PROMPT], TOKENS) == out  # after close: alone, no wait
    assert batcher.stats()["alone"] == 3
    with pytest.raises(ValueError):
        GenerationBatcher(llama, window_ms=-1)


# ----- the studio, app.py, the stress tool ------------------------------------------------------
def service_for(backbone, tmp_path, window: float | None) -> EditService:
    limits = Limits(max_new_tokens=6, max_edits_per_session=3, max_input_chars=200, max_lines=3,
                    batch_window_ms=window)
    return EditService(backbone, Editor.untrained(backbone, step_size=0.5),
                       Editor.untrained(backbone, step_size=0.5, use_instructions=False), limits,
                       export_dir=tmp_path)


def _shown(outcome) -> tuple:
    """Everything an edit's report shows but its timings."""
    out = []
    for report in (outcome.report, outcome.baseline_report):
        out += [report.prompt, report.rephrases, report.probes, report.wrapped, report.wrapped_rephrases,
                report.scores, report.blast.probes if report.blast else None]
    return tuple(out)


def test_the_studio_batches_sessions_and_each_sees_its_own_edits(llama, tmp_path):
    targets = ("Rome", "Berlin", "London")
    request = lambda t: EditRequest(PROMPT, t, task="counterfact", instruction=0,  # noqa: E731
                                    rephrases=("The Eiffel Tower is in",), probes=("Rome is in",))
    plain = service_for(llama, tmp_path / "plain", None)
    assert plain.batcher is None
    reference = {t: plain.edit(f"ref-{t}", request(t)) for t in targets}
    played = {t: plain.generate(f"ref-{t}", PROMPT) for t in targets}

    batched = service_for(llama, tmp_path / "batched", 1000)
    outcomes, errors = run_threads(lambda i: batched.edit(f"s{i}", request(targets[i])), 3)
    assert errors == {}
    for i, t in enumerate(targets):
        assert _shown(outcomes[i]) == _shown(reference[t])
    seen, errors = run_threads(lambda i: batched.generate(f"s{i}", PROMPT), 3)
    assert errors == {} and [seen[i] for i in range(3)] == [played[t] for t in targets]
    assert batched.generate("observer", PROMPT) == (played["Rome"][0],) * 2  # a fresh session: unedited
    stats = batched.batcher.stats()
    assert stats["requests"] > 0 and stats["batches"] >= 1 and stats["fallbacks"] == 0
    # generate_under goes through a batcher only inside its client context and for its backbone
    before = batched.batcher.stats()["requests"]
    generate_under(llama, [], ["Rome is in"], 3)
    with GenerationBatcher(dataclasses.replace(llama)).client():  # another backbone object
        generate_under(llama, [], ["Rome is in"], 3)
    assert batched.batcher.stats()["requests"] == before
    with batched.batcher.client():
        generate_under(llama, [], ["Rome is in"], 3)
    assert batched.batcher.stats()["requests"] == before + 1


def test_limits_app_flags_and_stress_option():
    assert Limits().batch_window_ms is None  # off by default
    assert Limits(batch_window_ms=0).batch_window_ms == 0
    for bad in ({"batch_window_ms": -1}, {"batch_window_ms": 5000}, {"batch_max_rows": 0}):
        with pytest.raises(ValueError):
            Limits(**bad)
    parser = app_module.build_parser()
    assert app_module.config_from_args(parser.parse_args([])).limits.batch_window_ms is None
    limits = app_module.config_from_args(parser.parse_args(["--batch-window-ms", "20", "--batch-max-rows",
                                                            "8"])).limits
    assert (limits.batch_window_ms, limits.batch_max_rows) == (20, 8)
    assert stress.build_parser().parse_args([]).batched is None
    assert stress.build_parser().parse_args(["--batched"]).batched == 20.0
    assert stress.build_parser().parse_args(["--batched", "5"]).batched == 5.0
    assert Limits().batch_max_extra_pad == DEFAULT_MAX_EXTRA_PAD
    with pytest.raises(ValueError, match="batch_max_extra_pad"):
        Limits(batch_max_extra_pad=-1)
    exact = app_module.config_from_args(parser.parse_args(["--batch-window-ms", "20",
                                                           "--batch-max-extra-pad", "0"])).limits
    assert exact.batch_max_extra_pad == 0
    assert stress.build_parser().parse_args(["--batched", "--max-extra-pad", "0"]).max_extra_pad == 0


def test_the_service_passes_the_padding_cap_to_its_batcher(llama, tmp_path):
    limits = Limits(batch_window_ms=5, batch_max_extra_pad=3)
    service = EditService(llama, Editor.untrained(llama, step_size=0.5), None, limits, export_dir=tmp_path)
    assert service.batcher.max_extra_pad == 3


def test_short_stress_run_batched(tiny_llama_dir, tmp_path):
    pytest.importorskip("gradio_client")
    backbone = load_backbone(str(tiny_llama_dir), device="cpu")
    limits = Limits(max_new_tokens=5, max_edits_per_session=3, max_input_chars=200, max_lines=3,
                    concurrency_limit=4, batch_window_ms=20)
    service = EditService(backbone, Editor.untrained(backbone, step_size=0.5),
                          Editor.untrained(backbone, step_size=0.5, use_instructions=False), limits,
                          export_dir=tmp_path / "exports")
    config = stress.StressConfig(users=3, rounds=1, warmup_rounds=1, request_timeout_s=60, deadline_s=240,
                                 close_timeout_s=30, heartbeat_s=0.25)
    report = stress.run_stress(service, config)
    print(report.text())
    assert report.errors == [] and report.mismatches == []
    assert report.batching["requests"] > 0 and report.batching["fallbacks"] == 0
    assert "batching:" in report.text()
