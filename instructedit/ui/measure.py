"""What one edit did, measured with the evaluation's definitions (see :mod:`instructedit.scoring`).

- reliability: token accuracy of the target on the edit input (wrapped with the instruction)
  after the edit;
- generalization: the same on each rephrase wrapped with the same instruction (mean);
- locality: share of probe answer tokens whose argmax is unchanged by the edit. A probe here is
  free text without an answer, so its answer is the first few tokens of its pre-edit greedy
  continuation.

"Before" means the session's model before this edit (its earlier edits on): edits stack.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ..backbone import Backbone
from ..editor import MAX_TARGET_TOKENS, Edit
from ..generation import GenerationConfig, generate
from ..patches import Patch, PatchEngine
from ..scoring import agreement, concat_batches, full_model_answer_logits, score_answers, tokenize_answers

GenerationCache = dict


@dataclass(frozen=True)
class EditScores:
    """The three per-edit scores in [0, 1]; ``None`` where there was nothing to measure."""

    reliability: float
    generalization: float | None
    locality: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RephraseResult:
    """A rephrase: its model input, target probability before/after, accuracy, continuations."""

    prompt: str
    model_input: str
    prob_before: float
    prob_after: float
    accuracy: float
    before: str
    after: str


@dataclass(frozen=True)
class ProbeResult:
    """A locality probe: continuations before/after, the answer measured, token agreement."""

    prompt: str
    before: str
    after: str
    answer: str | None
    agreement: float | None

    @property
    def unchanged(self) -> bool:
        return self.before == self.after


@dataclass(frozen=True)
class EditReport:
    """Everything shown for one edit by one editor."""

    editor: str
    model_input: str
    target: str
    before: str
    after: str
    prob_before: float
    prob_after: float
    rephrases: tuple[RephraseResult, ...]
    probes: tuple[ProbeResult, ...]
    scores: EditScores
    edit_ms: float
    measure_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def generate_under(backbone: Backbone, patches: Sequence[Patch], texts: Sequence[str],
                   max_new_tokens: int, cache: GenerationCache | None = None) -> dict[str, str]:
    """Greedy continuations of ``texts`` with exactly ``patches`` active (memoised in ``cache``)."""
    cache = {} if cache is None else cache
    state = tuple(id(p) for p in patches)
    missing = [t for t in dict.fromkeys(texts) if (state, max_new_tokens, t) not in cache]
    if missing:
        with PatchEngine.activate(list(patches)):
            outputs = generate(backbone, missing, GenerationConfig(max_new_tokens=max_new_tokens))
        for text, out in zip(missing, outputs, strict=True):
            cache[(state, max_new_tokens, text)] = out
    return {t: cache[(state, max_new_tokens, t)] for t in texts}


def first_tokens(tokenizer, text: str, n: int) -> str | None:
    """The first ``n`` tokens of ``text`` as text (stripped), or ``None`` if nothing is left."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    answer = tokenizer.decode(ids, skip_special_tokens=True).strip()
    return answer or None


@torch.no_grad()
def _answer_logits(backbone: Backbone, patches: Sequence[Patch], batch) -> torch.Tensor:
    with PatchEngine.activate(list(patches)):
        return full_model_answer_logits(backbone.model, batch)


def measure_edit(backbone: Backbone, edit: Edit, use_instructions: bool, before: Sequence[Patch],
                 max_new_tokens: int = 20, probe_answer_tokens: int = 5, *, texts: bool = True,
                 cache: GenerationCache | None = None) -> EditReport:
    """Measure ``edit`` (made on top of ``before``) on its input, rephrases and probes.

    With ``texts=False`` only what the scores need is generated (the probes' first tokens),
    which is what re-applying imported edits uses.
    """
    start = time.perf_counter()
    request = edit.request
    tokenizer = backbone.tokenizer
    after = [*before, edit.patch]
    inputs = [edit.wrapped_input] + [request.wrap(r, use_instructions) for r in request.rephrases]
    probes = list(request.probes)
    n_tokens = max_new_tokens if texts else probe_answer_tokens
    shown = inputs + probes if texts else probes
    pre = generate_under(backbone, before, shown, n_tokens, cache) if shown else {}
    post = generate_under(backbone, after, inputs + probes, n_tokens, cache) if texts else {}
    answers = [first_tokens(tokenizer, pre[p], probe_answer_tokens) for p in probes]
    scored = [(p, a) for p, a in zip(probes, answers, strict=True) if a is not None]

    target_batch = tokenize_answers(tokenizer, inputs, [request.target] * len(inputs),
                                    max_answer_tokens=MAX_TARGET_TOKENS)
    batches = [target_batch]
    if scored:
        batches.append(tokenize_answers(tokenizer, [p for p, _ in scored], [a for _, a in scored]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = concat_batches(*batches, pad_id=pad).to(backbone.device)
    logits_pre = _answer_logits(backbone, before, batch)
    logits_post = _answer_logits(backbone, after, batch)
    s_pre, s_post = score_answers(logits_pre, batch), score_answers(logits_post, batch)
    agree = agreement(s_pre.argmax, s_post.argmax, batch).tolist()

    n_in = len(inputs)
    prob_pre, prob_post = s_pre.probability.tolist(), s_post.probability.tolist()
    accuracy = s_post.token_accuracy.tolist()
    rephrases = tuple(
        RephraseResult(request.rephrases[i - 1], inputs[i], prob_pre[i], prob_post[i], accuracy[i],
                       pre.get(inputs[i], ""), post.get(inputs[i], ""))
        for i in range(1, n_in))
    agreement_of = {p: agree[n_in + k] for k, (p, _) in enumerate(scored)}
    probe_rows = tuple(ProbeResult(p, pre.get(p, ""), post.get(p, ""), a, agreement_of.get(p))
                       for p, a in zip(probes, answers, strict=True))
    measured = [r.agreement for r in probe_rows if r.agreement is not None]
    scores = EditScores(
        reliability=accuracy[0],
        generalization=sum(r.accuracy for r in rephrases) / len(rephrases) if rephrases else None,
        locality=sum(measured) / len(measured) if measured else None)
    return EditReport(editor=edit.editor_name, model_input=edit.wrapped_input, target=request.target,
                      before=pre.get(inputs[0], ""), after=post.get(inputs[0], ""),
                      prob_before=prob_pre[0], prob_after=prob_post[0], rephrases=rephrases,
                      probes=probe_rows, scores=scores, edit_ms=edit.latency_ms,
                      measure_ms=(time.perf_counter() - start) * 1000)
