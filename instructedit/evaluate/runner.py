"""Batched evaluation: each record edited independently from the unedited model.

A batch of B records is edited in one pass (each row gets its own patch, see
:func:`~instructedit.editing.editor.patch_from_inputs`); then every scored text of record ``i``
(its edit input, rephrases, portability questions, locality probes) runs with row ``i`` of the
patch via :meth:`~instructedit.editing.patches.Patch.select_rows`. With no editor the same passes run
unpatched, so the unedited model's scores come from the same code.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ..data.neighbours import NeighbourIndex
from ..data.records import EditRecord
from ..data.sentiment import SentimentScorer
from ..editing.editor import (
    MAX_TARGET_TOKENS,
    Editor,
    rekey_contexts,
    scheduled_patch_from_inputs,
    tokenize_edit_inputs,
)
from ..editing.patches import Patch, PatchEngine, stack_patches
from ..model.backbone import Backbone
from ..model.forward import CachedTopForward
from ..model.generation import GenerationConfig, generate
from ..scoring import (
    AnswerBatch,
    agreement,
    answer_batch_from_ids,
    answer_logits_from_hidden,
    kl_per_row,
    score_answers,
    tokenize_answers,
)
from .inputs import SEEN, InstructionChoice, RenderedRecord, render
from .metrics import EvalSummary, RecordResult, mean_or_none, ngram_entropy, summarize
from .plain import PlainProbes, PlainResult, bleed, contains_answer, degenerates, plain_probes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate.

    Attributes:
        instruction: see :mod:`instructedit.evaluate.inputs` (default: a seeded seen one).
        batch_size: records edited per pass (each independently).
        seed: seeds the instruction choice.
        max_answer_tokens: answers are cut to this many tokens (the editor's own limit).
        max_probes: at most this many rephrases / portability / locality probes per record.
        generation_tokens: greedy tokens generated for ConvSent sentiment success.
        sentiment: measure ConvSent sentiment success (needs generation: slower).
        progress: show a tqdm bar over records.
        plain: also measure the plain protocol (what a user sees; see :mod:`.plain`).
        unrelated: the fixed unrelated prompts of the plain protocol (None: the shipped panel).
    """

    instruction: InstructionChoice = SEEN
    batch_size: int = 8
    seed: int = 0
    max_answer_tokens: int = MAX_TARGET_TOKENS
    max_probes: int = 4
    generation_tokens: int = 20
    sentiment: bool = True
    progress: bool = True
    plain: bool = True
    unrelated: tuple[str, ...] | None = None


@dataclass
class EvalResult:
    """The summary and the per-record results of one evaluation."""

    summary: EvalSummary
    records: list[RecordResult] = field(default_factory=list)


@dataclass
class _Rows:
    """Texts scored in one pass and the record (batch row) each belongs to."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)

    def add(self, owner: int, prompt: str, answer: str) -> None:
        self.pairs.append((prompt, answer))
        self.owners.append(owner)


def _per_owner(values: torch.Tensor, owners: Sequence[int], n: int) -> list[float | None]:
    groups: list[list[float]] = [[] for _ in range(n)]
    for value, owner in zip(values.tolist(), owners, strict=False):
        groups[owner].append(value)
    return [mean_or_none(g) for g in groups]


def make_forward(backbone: Backbone, editor: Editor | None) -> CachedTopForward:
    """Final hidden states for scoring. The states entering the first edited block do not
    depend on the edit, so they are cached per sequence and repeated passes (post-edit, locality
    after the edit) run only the edited blocks (without an editor: the default edited blocks)."""
    names = editor.module_names if editor is not None else backbone.edited_module_names()
    start = min(backbone.adapter.layer_index(name) for name in names)
    dtype = getattr(torch, backbone.config.dtype or "float32")
    return CachedTopForward(backbone, start, dtype=dtype)


class Evaluator:
    """Evaluates an editor (or, with ``editor=None``, the unedited model) on edit records."""

    def __init__(self, backbone: Backbone, editor: Editor | None, config: EvalConfig | None = None,
                 scorer=None, neighbour_pool: Sequence[EditRecord] | None = None) -> None:
        if editor is not None and editor.backbone is not backbone:
            raise ValueError("the editor is bound to another backbone")
        self.backbone = backbone
        self.editor = editor
        self.config = config or EvalConfig()
        self.forward = make_forward(backbone, editor)
        self.use_instructions = True if editor is None else editor.use_instructions
        self._scorer = scorer
        self.neighbour_index = NeighbourIndex(neighbour_pool) if neighbour_pool else None
        self._before_texts: dict[str, str] = {}  # unedited continuations, per prompt
        self._before_nll: dict[str, float | None] = {}  # the unedited model's NLL of them, per prompt

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = SentimentScorer.load()
        return self._scorer

    # ----- passes ----------------------------------------------------------------------------
    def _batch(self, pairs: Sequence[tuple[str, str]]) -> AnswerBatch:
        return tokenize_answers(self.backbone.tokenizer, [p for p, _ in pairs], [a for _, a in pairs],
                                self.config.max_answer_tokens).to(self.backbone.device)

    def _logits(self, batch: AnswerBatch, patch: Patch | None) -> torch.Tensor:
        with torch.no_grad(), PatchEngine.activate(patch):
            return answer_logits_from_hidden(self.backbone.model, self.forward(batch), batch)

    @staticmethod
    def _rows(patch: Patch | None, owners: Sequence[int]) -> Patch | None:
        return None if patch is None else patch.select_rows(torch.tensor(owners, dtype=torch.long))

    def _sync(self) -> None:
        if self.backbone.device.type == "cuda":
            torch.cuda.synchronize(self.backbone.device)

    def _edit(self, batch: AnswerBatch, items: Sequence[RenderedRecord],
              ) -> tuple[Patch | None, torch.Tensor, float | None]:
        """(batched patch, pre-edit answer logits, editing ms per record)."""
        if self.editor is None:
            return None, self._logits(batch, None), None
        if not isinstance(self.editor, Editor):
            return self._edit_one_by_one(batch, items)
        self._sync()
        start = time.perf_counter()
        tokenizer = self.backbone.tokenizer
        inputs = tokenize_edit_inputs(tokenizer, self.editor.network,
                                      [it.edit_input for it in items],
                                      [it.record.prompt for it in items],
                                      [it.record.target_new for it in items],
                                      [it.record.subject or it.record.topic for it in items],
                                      self.config.max_answer_tokens, wrapped_batch=batch,
                                      contexts=rekey_contexts(self.backbone, self.editor.schedule),
                                      ).to(self.backbone.device)
        patch, logits = scheduled_patch_from_inputs(self.editor.network, self.editor.module_names,
                                                    inputs, self.forward, self.backbone.model,
                                                    self.editor.schedule,
                                                    pad_id=tokenizer.pad_token_id or 0)
        patch = patch.detach().truncated(self.editor.patch_rank)
        self._sync()
        latency = (time.perf_counter() - start) * 1000 / batch.size
        if not all(layer.is_finite() for layer in patch.layers.values()):
            log.warning("an edit of this batch produced non-finite values; its scores are meaningless")
        return patch, logits, latency

    def _edit_one_by_one(self, batch: AnswerBatch, items: Sequence[RenderedRecord],
                         ) -> tuple[Patch, torch.Tensor, float]:
        """Editors that optimise each edit on its own (ROME, fine-tuning): one patch per record,
        stacked.

        For an editor that edits at the subject (``needs_subject``: ROME), a record whose subject
        is not in its prompt gets no edit (an empty patch row)."""
        pre_logits = self._logits(batch, None)
        self._sync()
        start = time.perf_counter()
        needs_subject = getattr(self.editor, "needs_subject", True)
        wanted = [(i, it) for i, it in enumerate(items)
                  if not needs_subject or (it.record.subject and it.record.subject.strip() in it.record.prompt)]
        patches = self.editor.patches([(it.record.prompt.strip(), (it.record.subject or "").strip(),
                                        it.record.target_new.strip()) for _, it in wanted])
        rows = [Patch({}) for _ in items]
        for (i, _), patch in zip(wanted, patches, strict=True):
            rows[i] = patch
        if len(wanted) < len(items):
            log.warning("%d record(s) have no subject in their prompt: %s makes no edit for them",
                        len(items) - len(wanted), self.editor.name)
        self._sync()
        latency = (time.perf_counter() - start) * 1000 / batch.size
        return stack_patches(rows), pre_logits, latency

    # ----- one batch ---------------------------------------------------------------------------
    def evaluate_batch(self, items: Sequence[RenderedRecord]) -> list[RecordResult]:
        """Edit each of ``items`` independently and measure it."""
        n = len(items)
        if isinstance(self.forward, CachedTopForward):  # (tests may swap in a FullForward)
            self.forward.cache.clear()  # states are reused within a batch only
        edit = self._batch([(it.edit_input, it.record.target_new) for it in items])
        patch, pre_logits, latency = self._edit(edit, items)
        pre = score_answers(pre_logits, edit)

        wrapped = _Rows()
        for i, it in enumerate(items):
            wrapped.add(i, it.edit_input, it.record.target_new)
        kinds = ["edit"] * n
        for i, it in enumerate(items):
            for text in it.rephrases:
                wrapped.add(i, text, it.record.target_new)
                kinds.append("rephrase")
            for text, answer in it.portability:
                wrapped.add(i, text, answer)
                kinds.append("portability")
        batch = self._batch(wrapped.pairs)
        post = score_answers(self._logits(batch, self._rows(patch, wrapped.owners)), batch)
        post_logprob = -post.mean_nll[:n]

        def by_kind(kind: str) -> list[float | None]:
            keep = [j for j, k in enumerate(kinds) if k == kind]
            if not keep:
                return [None] * n
            return _per_owner(post.token_accuracy[keep], [wrapped.owners[j] for j in keep], n)

        generalization, portability = by_kind("rephrase"), by_kind("portability")
        locality, locality_kl = self._locality(items, patch)
        sentiment, fluency, texts = self._sentiment(items, patch)
        plain = self._plain(items, patch) if self.config.plain else [PlainResult() for _ in items]
        results = []
        for i, it in enumerate(items):
            results.append(RecordResult(
                id=it.record.id, task=it.record.task,
                instruction=None if it.instruction is None else str(it.instruction),
                reliability=float(post.token_accuracy[i]), reliability_pre=float(pre.token_accuracy[i]),
                target_logprob_pre=float(-pre.mean_nll[i]), target_logprob_post=float(post_logprob[i]),
                generalization=generalization[i], locality=locality[i], locality_kl=locality_kl[i],
                portability=portability[i], latency_ms=latency, sentiment_success=sentiment[i],
                fluency=fluency[i], generation=texts[i], **vars(plain[i])))
        return results

    def _locality(self, items: Sequence[RenderedRecord], patch: Patch | None):
        n = len(items)
        rows = _Rows()
        for i, it in enumerate(items):
            for prompt, answer in it.locality:
                rows.add(i, prompt, answer)
        if not rows.pairs:
            return [None] * n, [None] * n
        batch = self._batch(rows.pairs)
        before = self._logits(batch, None)
        after = self._logits(batch, self._rows(patch, rows.owners))
        agree = agreement(before.argmax(-1), after.argmax(-1), batch)
        kl = kl_per_row(before, after, batch)
        return _per_owner(agree, rows.owners, n), _per_owner(kl, rows.owners, n)

    def _generate(self, prompts: Sequence[str], patch: Patch | None, owners: Sequence[int],
                  ) -> tuple[list[str], list[str]]:
        """(before, after) greedy continuations of plain ``prompts``; ``owners[j]`` is the patch row
        of prompt ``j``. Unedited continuations are computed once per prompt and kept."""
        config = GenerationConfig(max_new_tokens=self.config.generation_tokens)
        missing = sorted({p for p in prompts if p not in self._before_texts})
        if missing:
            self._before_texts.update(zip(missing, generate(self.backbone, missing, config), strict=True))
        before = [self._before_texts[p] for p in prompts]
        if patch is None:
            return before, list(before)
        with PatchEngine.activate(self._rows(patch, owners)):
            after = generate(self.backbone, list(prompts), config)
        return before, after

    def _continuation_nll(self, pairs: Sequence[tuple[str, str]]) -> list[float | None]:
        """The unedited model's mean NLL per token of each (prompt, continuation); ``None`` where
        the continuation has no tokens."""
        tokenizer = self.backbone.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = [(tokenizer(p)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"]) for p, c in pairs]
        scored = [k for k, (p_ids, c_ids) in enumerate(ids) if p_ids and c_ids]
        out: list[float | None] = [None] * len(pairs)
        for begin in range(0, len(scored), self.config.batch_size * 4):
            chunk = scored[begin: begin + self.config.batch_size * 4]
            batch = answer_batch_from_ids([ids[k][0] for k in chunk], [ids[k][1] for k in chunk],
                                          pad).to(self.backbone.device)
            nll = score_answers(self._logits(batch, None), batch).mean_nll.tolist()
            for k, value in zip(chunk, nll, strict=True):
                out[k] = value
        return out

    def _remember_before_nll(self, prompts: Sequence[str]) -> None:
        """Score the unedited continuations of ``prompts`` not scored yet (see :meth:`_continuation_nll`)."""
        missing = sorted({p for p in prompts if p not in self._before_nll})
        if missing:
            values = self._continuation_nll([(p, self._before_texts[p]) for p in missing])
            self._before_nll.update(zip(missing, values, strict=True))

    def _plain(self, items: Sequence[RenderedRecord], patch: Patch | None) -> list[PlainResult]:
        """The plain protocol (what a user sees) of every item; see :mod:`.plain`."""
        n = len(items)
        probes = [plain_probes(it.record, self.neighbour_index, self.config.max_probes,
                               self.config.seed, self.config.unrelated) for it in items]
        results = [PlainResult() for _ in items]
        # teacher-forced: target on plain prompt / rephrases; true answer vs target on neighbours
        rows, kinds = _Rows(), []
        for i, (it, pr) in enumerate(zip(items, probes, strict=True)):
            for kind, text in [("prompt", pr.prompt)] + [("rephrase", r) for r in pr.rephrases]:
                rows.add(i, text, it.record.target_new)
                kinds.append(kind)
            for nb in pr.neighbours:
                rows.add(i, nb.prompt, nb.answer)
                kinds.append("true")
                rows.add(i, nb.prompt, it.record.target_new)
                kinds.append("new")
        batch = self._batch(rows.pairs)
        after_logits = self._logits(batch, self._rows(patch, rows.owners))
        after = score_answers(after_logits, batch)
        before_logits = self._logits(batch, None) if patch is not None else after_logits
        unchanged = agreement(before_logits.argmax(-1), after_logits.argmax(-1), batch)
        accuracy, nll, agree = after.token_accuracy.tolist(), after.mean_nll.tolist(), unchanged.tolist()
        per: list[dict[str, list[float]]] = [{} for _ in range(n)]
        for j, (owner, kind) in enumerate(zip(rows.owners, kinds, strict=True)):
            group = per[owner]
            if kind in ("prompt", "rephrase"):
                group.setdefault(kind, []).append(accuracy[j])
            elif kind == "true":
                group.setdefault("ns", []).append(float(nll[j] < nll[j + 1]))
                group.setdefault("unchanged", []).append(agree[j])
        for i, group in enumerate(per):
            results[i].plain_reliability = mean_or_none(group.get("prompt", []))
            results[i].plain_generalization = mean_or_none(group.get("rephrase", []))
            results[i].neighbourhood_score = mean_or_none(group.get("ns", []))
            results[i].neighbour_unchanged = mean_or_none(group.get("unchanged", []))
        self._plain_continuations(items, probes, patch, results)
        return results

    def _plain_continuations(self, items: Sequence[RenderedRecord], probes: Sequence[PlainProbes],
                             patch: Patch | None, results: list[PlainResult]) -> None:
        prompts, owners, spans = [], [], []
        for i, pr in enumerate(probes):
            if not pr.continuations:
                spans.append(None)
                continue
            texts = [pr.prompt] + [nb.prompt for nb in pr.neighbours] + list(pr.unrelated)
            spans.append((len(prompts), len(pr.neighbours), len(pr.unrelated)))
            prompts += texts
            owners += [i] * len(texts)
        if not prompts:
            return
        before, after = self._generate(prompts, patch, owners)
        nll_of_after: dict[tuple[str, str], float | None] = {}
        if patch is not None:
            read_rows = [j for span in spans if span is not None for j in range(span[0], span[0] + 1 + span[1])]
            self._remember_before_nll([prompts[j] for j in read_rows])
            changed = sorted({(prompts[j], after[j]) for j in read_rows if after[j] != before[j]})
            nll_of_after = dict(zip(changed, self._continuation_nll(changed), strict=True))
        for i, span in enumerate(spans):
            if span is None:
                continue
            start, n_nb, n_un = span
            target = items[i].record.target_new
            nb = slice(start + 1, start + 1 + n_nb)
            un = slice(start + 1 + n_nb, start + 1 + n_nb + n_un)
            result = results[i]
            result.plain_generation_pre, result.plain_generation = before[start], after[start]
            result.generation_success = float(contains_answer(after[start], target))
            result.neighbour_bleed = bleed(before[nb], after[nb], target)
            result.unrelated_bleed = bleed(before[un], after[un], target)
            read = slice(start, nb.stop)
            entropy_before = [ngram_entropy(t) for t in before[read]]
            entropy_after = [ngram_entropy(t) for t in after[read]]
            result.plain_fluency_pre = mean_or_none(entropy_before)
            result.plain_fluency = mean_or_none(entropy_after)
            if patch is not None:
                broken = False
                for prompt, b, a, eb, ea in zip(prompts[read], before[read], after[read], entropy_before,
                                                entropy_after, strict=True):
                    if a == b:
                        continue
                    nll_b, nll_a = self._before_nll[prompt], nll_of_after[(prompt, a)]
                    if not a.strip() or (nll_b is not None and nll_a is not None
                                         and degenerates(eb, ea, nll_b, nll_a)):
                        broken = True
                result.degenerate = float(broken)
            else:
                result.degenerate = 0.0
            result.neighbour_generations = [
                (p.prompt, b, a) for p, b, a in zip(probes[i].neighbours, before[nb], after[nb],
                                                    strict=True)]

    def _sentiment(self, items: Sequence[RenderedRecord], patch: Patch | None):
        """ConvSent: greedy generations after the edit and whether their sentiment is the label."""
        n = len(items)
        none: list = [None] * n
        chosen = [i for i, it in enumerate(items) if it.record.task == "convsent" and it.record.label]
        if not chosen or not self.config.sentiment:
            return none, list(none), list(none)
        config = GenerationConfig(max_new_tokens=self.config.generation_tokens)
        with PatchEngine.activate(self._rows(patch, chosen)):
            texts = generate(self.backbone, [items[i].edit_input for i in chosen], config)
        success, fluency, generations = list(none), list(none), list(none)
        for i, text in zip(chosen, texts, strict=False):
            success[i] = float(self.scorer.label(text) == items[i].record.label)
            fluency[i] = ngram_entropy(text)
            generations[i] = text
        return success, fluency, generations

    # ----- all records ---------------------------------------------------------------------------
    def render(self, records: Sequence[EditRecord]) -> list[RenderedRecord]:
        return [render(r, self.config.instruction, self.use_instructions, self.config.seed,
                       self.config.max_probes) for r in records]

    def run(self, records: Sequence[EditRecord], desc: str = "eval") -> EvalResult:
        """Evaluate every record (batched by similar input length); results in record order."""
        if not records:
            raise ValueError("no records to evaluate")
        if self.config.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.config.batch_size}")
        items = self.render(records)
        order = sorted(range(len(items)), key=lambda i: len(items[i].edit_input))
        results: list[RecordResult | None] = [None] * len(items)
        start = time.perf_counter()
        size = self.config.batch_size
        with tqdm(total=len(items), unit="edit", desc=desc, disable=not self.config.progress,
                  dynamic_ncols=True, mininterval=2) as bar:
            for k in range(0, len(order), size):
                chunk = order[k: k + size]
                for i, result in zip(chunk, self.evaluate_batch([items[i] for i in chunk]), strict=False):
                    results[i] = result
                bar.update(len(chunk))
        done = [r for r in results if r is not None]
        return EvalResult(summarize(done, time.perf_counter() - start), done)


def evaluate(backbone: Backbone, editor: Editor | None, records: Sequence[EditRecord],
             config: EvalConfig | None = None, desc: str = "eval",
             neighbour_pool: Sequence[EditRecord] | None = None) -> EvalResult:
    """Evaluate ``editor`` (``None``: the unedited model) on ``records``; same-template neighbours
    of the plain protocol come from ``neighbour_pool`` (default: ``records`` themselves)."""
    pool = neighbour_pool if neighbour_pool is not None else records
    return Evaluator(backbone, editor, config, neighbour_pool=pool).run(records, desc)
