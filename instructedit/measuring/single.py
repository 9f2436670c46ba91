"""What one edit did, measured with the evaluation's definitions: the one measure of a single edit,
shared by the studio and the CLI's ``edit`` command (the evaluation measures the same batched).

What a user sees first (the plain protocol of :mod:`instructedit.evaluate.plain`):

- plain reliability: teacher-forced token accuracy of the target on the prompt as typed;
- generation success: the greedy continuation of the prompt as typed contains the target
  (:func:`~instructedit.measuring.verdicts.contains_answer`; short-answer tasks only);
- plain generalization: the same accuracy on the rephrases as typed;
- a verdict per rephrase and locality probe (:mod:`.verdicts`).

What the editor read (the paper protocol, instruction-wrapped inputs):

- reliability: token accuracy of the target on the edit input (wrapped with the instruction);
- generalization: the same on each rephrase wrapped with the same instruction (mean);
- locality: share of probe answer tokens whose argmax is unchanged by the edit. A probe here is
  free text without an answer, so its answer is the first few tokens of its pre-edit greedy
  continuation.

"Before" means the model before this edit with the patches ``before`` on (a studio session's
earlier edits: edits stack; none for the CLI). A probe is *changed* when its verdict is not
"same answer" (:mod:`.verdicts`), in the studio and in the CLI alike.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..editing.editor import Edit
from ..editing.patches import Patch
from ..model.backbone import Backbone
from .probing import (
    LOCALITY,
    PROMPT,
    REPHRASE,
    WRAPPED,
    WRAPPED_REPHRASE,
    GenerationCache,
    Probe,
    ProbeResult,
    generate_under,
    measure_probes,
)
from .verdicts import CONTINUATION_TASKS, contains_answer

__all__ = ["EditReport", "EditScores", "GenerationCache", "ProbeResult", "edit_probes", "generate_under",
           "mean_known", "measure_edit", "measure_first_look"]


@dataclass(frozen=True)
class EditScores:
    """Per-edit scores in [0, 1]; ``None`` where there was nothing to measure.

    ``reliability``, ``generalization``, ``locality``: the paper protocol (wrapped inputs);
    ``plain_reliability``, ``generation_success``, ``plain_generalization``: what a user sees.
    """

    reliability: float
    generalization: float | None
    locality: float | None
    plain_reliability: float | None = None
    generation_success: float | None = None
    plain_generalization: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EditReport:
    """Everything shown for one edit by one editor.

    ``prompt``: the sentence as typed; ``rephrases`` and ``probes``: the rephrases and locality
    probes as typed; ``wrapped`` and ``wrapped_rephrases``: what the editor read (paper protocol);
    ``blast``: the blast radius (other subjects, other facts, unrelated facts), when the studio
    measured it (a :class:`instructedit.web.blast.BlastRadius`; the studio adds it).
    ``partial``: a first look (:func:`measure_first_look`): the prompt as typed only; rephrases,
    probes and the blast radius are still being measured.
    """

    editor: str
    target: str
    prompt: ProbeResult
    rephrases: tuple[ProbeResult, ...]
    probes: tuple[ProbeResult, ...]
    wrapped: ProbeResult
    wrapped_rephrases: tuple[ProbeResult, ...]
    scores: EditScores
    edit_ms: float
    measure_ms: float
    says_target: bool = True
    blast: Any = None
    partial: bool = False

    @property
    def model_input(self) -> str:
        """The edit input exactly as the editor read it."""
        return self.wrapped.prompt


def mean_known(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (``None`` if there are none)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def measure_edit(backbone: Backbone, edit: Edit, use_instructions: bool, before: Sequence[Patch],
                 max_new_tokens: int = 20, probe_answer_tokens: int = 5, *, texts: bool = True,
                 cache: GenerationCache | None = None, plain_alone: bool = True) -> EditReport:
    """Measure ``edit`` (made on top of ``before``) on its prompt, rephrases and probes, as typed
    and as the editor read them.

    With ``plain_alone`` the prompt as typed is generated on its own (one prompt per call, as the
    Playground does: a batch pads, and padding can flip a greedy token in low precision), the rest
    in one batch, before and after the edit in one call; without it (an editor whose edits the
    Playground does not show) the prompt joins that batch. With ``texts=False`` only what the
    scores need is generated, which is what re-applying imported edits uses.
    """
    start = time.perf_counter()
    cache = GenerationCache() if cache is None else cache
    request = edit.request
    target = request.target
    says = request.task in CONTINUATION_TASKS
    after = [*before, edit.patch]
    plain = request.prompt.strip()
    if plain_alone or not texts:
        if texts:
            generate_under(backbone, before, [plain], max_new_tokens, cache)
        generate_under(backbone, after, [plain], max_new_tokens, cache)
    probes = edit_probes(edit, use_instructions)
    results = measure_probes(backbone, before, after, probes, target, max_new_tokens=max_new_tokens,
                             cache=cache, says_target=says, agreement_groups=(LOCALITY,),
                             agreement_tokens=probe_answer_tokens, texts=texts)
    by_group: dict[str, list[ProbeResult]] = {}
    for result in results:
        by_group.setdefault(result.group, []).append(result)
    prompt, wrapped = by_group[PROMPT][0], by_group[WRAPPED][0]
    rephrases = tuple(by_group.get(REPHRASE, ()))
    wrapped_rephrases = tuple(by_group.get(WRAPPED_REPHRASE, ()))
    locality = tuple(by_group.get(LOCALITY, ()))
    scores = EditScores(
        reliability=wrapped.target_accuracy,
        generalization=mean_known([r.target_accuracy for r in wrapped_rephrases]),
        locality=mean_known([p.agreement for p in locality]),
        plain_reliability=prompt.target_accuracy,
        generation_success=float(contains_answer(_after(backbone, after, plain, max_new_tokens, cache, prompt),
                                                 target)) if says else None,
        plain_generalization=mean_known([r.target_accuracy for r in rephrases]))
    return EditReport(editor=edit.editor_name, target=target, prompt=prompt, rephrases=rephrases,
                      probes=locality, wrapped=wrapped, wrapped_rephrases=wrapped_rephrases,
                      scores=scores, edit_ms=edit.latency_ms,
                      measure_ms=(time.perf_counter() - start) * 1000, says_target=says)


def edit_probes(edit: Edit, use_instructions: bool) -> list[Probe]:
    """What :func:`measure_edit` measures: the prompt as typed, the rephrases and locality probes
    as typed, the edit input and the rephrases as the editor read them."""
    request, target = edit.request, edit.request.target
    return [Probe(request.prompt.strip(), PROMPT),
            *(Probe(r, REPHRASE, target) for r in request.rephrases),
            *(Probe(p, LOCALITY) for p in request.probes),
            Probe(edit.wrapped_input, WRAPPED, target),
            *(Probe(request.wrap(r, use_instructions), WRAPPED_REPHRASE, target) for r in request.rephrases)]


def _after(backbone: Backbone, after: Sequence[Patch], plain: str, max_new_tokens: int,
           cache: GenerationCache, prompt: ProbeResult) -> str:
    """The prompt's continuation after the edit: as shown when texts were generated, else (the
    imports' scores-only route) the one generated for the score."""
    if prompt.after:
        return prompt.after
    return generate_under(backbone, after, [plain], max_new_tokens, cache)[plain]


def measure_first_look(backbone: Backbone, edit: Edit, before: Sequence[Patch], max_new_tokens: int = 20,
                       *, cache: GenerationCache | None = None) -> EditReport:
    """What the studio shows first, as fast as it can: the continuation of the prompt as typed
    before and after ``edit`` (each generated on its own, as :func:`measure_edit` does, so the
    full report reuses them) and the teacher-forced scores of the prompt and of the editor's
    input. Rephrases, probes and the blast radius come with :func:`measure_edit`."""
    start = time.perf_counter()
    cache = GenerationCache() if cache is None else cache
    request = edit.request
    says = request.task in CONTINUATION_TASKS
    after = [*before, edit.patch]
    plain = request.prompt.strip()
    generate_under(backbone, before, [plain], max_new_tokens, cache)
    plain_after = generate_under(backbone, after, [plain], max_new_tokens, cache)[plain]
    prompt, wrapped = measure_probes(
        backbone, before, after, [Probe(plain, PROMPT), Probe(edit.wrapped_input, WRAPPED, request.target)],
        request.target, max_new_tokens=max_new_tokens, cache=cache, says_target=says,
        text_groups=(PROMPT,))
    scores = EditScores(
        reliability=wrapped.target_accuracy, generalization=None, locality=None,
        plain_reliability=prompt.target_accuracy,
        generation_success=float(contains_answer(plain_after, request.target)) if says else None)
    return EditReport(editor=edit.editor_name, target=request.target, prompt=prompt, rephrases=(),
                      probes=(), wrapped=wrapped, wrapped_rephrases=(), scores=scores,
                      edit_ms=edit.latency_ms, measure_ms=(time.perf_counter() - start) * 1000,
                      says_target=says, partial=True)
