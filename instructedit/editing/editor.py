"""The editor: turns an edit request into a low-rank :class:`~instructedit.editing.patches.Patch`.

An edit is one forward and backward pass of the (instruction-wrapped) edit input + target with
the edited modules' inputs ``u_t`` and output gradients ``d_t`` captured, then the MEND network
maps them to update factors. The base model is never modified.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import torch

from ..defaults import DEFAULT_PATCH_RANK
from ..errors import UserFacingError
from ..instructions import build_edit_input
from ..model.backbone import Backbone
from ..scoring import (
    AnswerBatch,
    answer_logits_from_hidden,
    concat_batches,
    length_buckets,
    run_in_groups,
    score_answers,
    tokenize_answers,
)
from .checkpoint import CheckpointError, load_editor_checkpoint, save_editor_checkpoint
from .contexts import context_prefixes, prefixed
from .keying import KEY_ON_SUBJECT, key_mask
from .mend import EditorConfig, MendNetwork
from .patches import LayerPatch, Patch, PatchEngine, concat_layer_patches
from .preconditioning import attach_preconditioners
from .rekey import capture_module_inputs, rekey_patch
from .schedule import EditSchedule
from .subject_guess import guess_subject

log = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000
MAX_TARGET_TOKENS = 64


class EditError(UserFacingError, ValueError):
    """An edit request cannot be carried out; nothing changed."""


@dataclass(frozen=True)
class EditRequest:
    """What to edit: a prompt, the new target, and how to instruct the editor.

    ``instruction``: an index into the task's instructions, ``"heldout"``, custom text, or
    ``None`` for no instruction. ``topic``/``label`` fill ConvSent placeholders. ``subject``:
    what the fact is about (editors keyed on the subject need it; see :mod:`instructedit.editing.keying`;
    left out, such an editor keys on a guess from the prompt, which the :class:`Edit` records).
    """

    prompt: str
    target: str
    task: str = "custom"
    instruction: int | str | None = None
    topic: str | None = None
    label: str | None = None
    rephrases: tuple[str, ...] = ()
    probes: tuple[str, ...] = ()
    subject: str | None = None

    def edit_input(self, use_instructions: bool = True) -> str:
        """The text the editor sees (wrapped with the instruction when one is chosen)."""
        return self.wrap(self.prompt, use_instructions)

    def wrap(self, prompt: str, use_instructions: bool = True) -> str:
        """``prompt`` (this one or a rephrase) wrapped with this request's instruction, or only
        stripped without instructions (:func:`~instructedit.instructions.build_edit_input`)."""
        return build_edit_input(self.task, prompt, self.instruction if use_instructions else None,
                                topic=self.topic, label=self.label)


@dataclass
class Edit:
    """One applied edit: its request, the wrapped input, and its low-rank patch."""

    request: EditRequest
    wrapped_input: str
    patch: Patch
    editor_name: str
    model_id: str
    latency_ms: float
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def validate_request(request: EditRequest, tokenizer, max_target_tokens: int = MAX_TARGET_TOKENS) -> None:
    """Raise :class:`EditError` with a readable message for bad prompts or targets."""
    for name in ("prompt", "target"):
        value = getattr(request, name)
        if not isinstance(value, str) or not value.strip():
            raise EditError(f"the {name} is empty: type some text")
        if len(value) > MAX_PROMPT_CHARS:
            raise EditError(f"the {name} is too long ({len(value)} characters; the limit is {MAX_PROMPT_CHARS})")
        if any(ord(c) < 32 and c not in "\t\n" for c in value):
            raise EditError(f"the {name} contains control characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EditError(f"the {name} is not valid text (it contains unpaired surrogate "
                            "characters)") from None
    n_target = len(tokenizer(" " + request.target.strip(), add_special_tokens=False)["input_ids"])
    if n_target > max_target_tokens:
        raise EditError(f"the target is {n_target} tokens long; the limit is {max_target_tokens} "
                        "(an edit teaches a short answer, not a text)")


HiddenFn = Callable[[AnswerBatch], torch.Tensor]


def compute_batched_patch(network: MendNetwork, module_names: Sequence[str], batch: AnswerBatch,
                          final_hidden: HiddenFn, head_model, edit_rows: int | None = None,
                          key_mask: torch.Tensor | None = None, by_length: bool = False,
                          ) -> tuple[Patch, torch.Tensor]:
    """One patch per row of ``batch`` (factors with a leading batch dimension).

    ``final_hidden(batch)`` runs the model (all of it, or only its top from cached states) and
    returns final hidden states; the edited modules must be hooked by a :class:`PatchEngine`.
    The loss is the mean NLL of each row's answer tokens, summed over the first ``edit_rows``
    rows (all by default; rows are independent, so each row's gradients are its own; other rows
    get all-zero factors). ``key_mask`` (B, T) keeps only those positions' (u, d) in the update
    (see :mod:`instructedit.editing.keying`; default: every real token). ``by_length`` runs the
    rows in groups of similar length (:func:`~instructedit.scoring.length_buckets`; the same
    gradients with less padding: training). Also returns the detached answer logits of the
    unpatched pass.
    """
    groups = length_buckets(batch.attention_mask.sum(1).tolist()) if by_length else [list(range(batch.size))]
    counted = batch.size if edit_rows is None else edit_rows
    inputs: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def run(sub: AnswerBatch, rows: list[int]) -> torch.Tensor:
        with torch.enable_grad(), PatchEngine.capture(module_names) as capture:
            logits = answer_logits_from_hidden(head_model, final_hidden(sub), sub)
            nll = score_answers(logits, sub).mean_nll
            keep = torch.tensor([r < counted for r in rows], device=nll.device)
            part = capture.output_gradients(nll[keep].sum()) if bool(keep.any()) else {
                name: torch.zeros_like(probe) for name, probe in capture.probes.items()}
        for name in module_names:  # each row's (u, d) at its place in ``batch``
            x, g = capture.inputs[name], part[name]
            if sub is batch:
                inputs[name], grads[name] = x, g
                continue
            if name not in inputs:
                inputs[name] = x.new_zeros((batch.size, batch.input_ids.shape[1], x.shape[-1]))
                grads[name] = g.new_zeros((batch.size, batch.input_ids.shape[1], g.shape[-1]))
            inputs[name][rows, : x.shape[1]] = x
            grads[name][rows, : g.shape[1]] = g
        return logits.detach()

    logits = run_in_groups(batch, groups, run)
    mask = batch.attention_mask.bool()
    if key_mask is not None:
        mask = mask & key_mask.to(mask.device)
    layers = {}
    for name in module_names:
        u = inputs[name].float()
        d = grads[name].float()
        valid = mask & (d.abs().sum(-1) > 0)
        u_t, d_t = network.transform(name, u[valid], d[valid])
        u_out = torch.zeros(u.shape, dtype=u_t.dtype, device=u.device).index_put((valid,), u_t)
        d_out = torch.zeros(d.shape, dtype=d_t.dtype, device=d.device).index_put((valid,), d_t)
        layers[name] = LayerPatch(u_out, d_out, network.step_size(name))
    return Patch(layers), logits


@dataclass
class EditInputs:
    """The tokenized inputs a batch of edits is computed from (one edit per row of ``wrapped``).

    ``wrapped``: the edit inputs as the editor reads them (wrapped in the instruction when it uses
    instructions), with their targets. ``plain``: the prompts as typed, same targets, present
    when the editor edits from both (``EditorConfig.edit_from == "wrapped+plain"``); a row whose
    plain prompt equals its wrapped input is masked out there, so it counts once. ``*_keys``: the
    (B, T) positions whose (u, d) build the update (None: every real token).
    """

    wrapped: AnswerBatch
    wrapped_keys: torch.Tensor | None = None
    plain: AnswerBatch | None = None
    plain_keys: torch.Tensor | None = None
    contexts: AnswerBatch | None = None        # each prompt after each context prefix (edit-major)
    context_keys: torch.Tensor | None = None   # for re-keying (:mod:`.rekey`); not edited from

    def to(self, device) -> EditInputs:
        def move(x):
            return None if x is None else x.to(device)
        return EditInputs(self.wrapped.to(device), move(self.wrapped_keys), move(self.plain),
                          move(self.plain_keys), move(self.contexts), move(self.context_keys))


def tokenize_edit_inputs(tokenizer, network: MendNetwork, wrapped: Sequence[str],
                         plain: Sequence[str], targets: Sequence[str],
                         subjects: Sequence[str | None],
                         max_answer_tokens: int = MAX_TARGET_TOKENS,
                         wrapped_batch: AnswerBatch | None = None,
                         contexts: Sequence[str] = ()) -> EditInputs:
    """Tokenize a batch of edits for ``network`` (its ``key_on`` and ``edit_from`` settings).

    ``wrapped_batch``: the wrapped inputs already tokenized with their targets (not redone).
    ``contexts``: prefixes to put each plain prompt after, for re-keying (:mod:`.rekey`)."""
    def tokenize(prompts: Sequence[str], batch: AnswerBatch | None = None, answers: Sequence[str] = targets,
                 about: Sequence[str | None] = subjects) -> tuple[AnswerBatch, torch.Tensor | None]:
        if batch is None:
            batch = tokenize_answers(tokenizer, prompts, answers, max_answer_tokens=max_answer_tokens)
        keys = (key_mask(tokenizer, batch, prompts, about)
                if network.config.key_on == KEY_ON_SUBJECT else None)
        return batch, keys

    context_batch = context_keys = None
    if contexts:
        context_batch, context_keys = tokenize(
            [prefixed(p.strip(), c) for p in plain for c in contexts],
            answers=[t for t in targets for _ in contexts], about=[s for s in subjects for _ in contexts])
    wrapped_batch, wrapped_keys = tokenize(wrapped, wrapped_batch)
    if network.config.edit_from != "wrapped+plain":
        return EditInputs(wrapped_batch, wrapped_keys, contexts=context_batch, context_keys=context_keys)
    plain_batch, plain_keys = tokenize([p.strip() for p in plain])
    if plain_keys is None:
        plain_keys = plain_batch.attention_mask.bool().clone()
    for row, (w, p) in enumerate(zip(wrapped, plain, strict=True)):
        if w.strip() == p.strip():
            plain_keys[row] = False
    return EditInputs(wrapped_batch, wrapped_keys, plain_batch, plain_keys, context_batch, context_keys)


def patch_from_inputs(network: MendNetwork, module_names: Sequence[str], inputs: EditInputs,
                      final_hidden: HiddenFn, head_model, pad_id: int = 0, by_length: bool = False,
                      ) -> tuple[Patch, torch.Tensor]:
    """One patch per edit of ``inputs`` (batched factors) and the unpatched answer logits of its
    wrapped rows (see :func:`compute_batched_patch`)."""
    patch, logits, _ = edit_pass(network, module_names, inputs, final_hidden, head_model,
                                 pad_id=pad_id, by_length=by_length)
    return patch, logits


def edit_pass(network: MendNetwork, module_names: Sequence[str], inputs: EditInputs,
              final_hidden: HiddenFn, head_model, pad_id: int = 0, by_length: bool = False,
              ) -> tuple[Patch, torch.Tensor, torch.Tensor]:
    """:func:`patch_from_inputs` plus, per edit, how well it already holds before this pass: the
    lower of its target's per-token probability (geometric mean) on the wrapped input and on the
    typed prompt (where the editor edits from both)."""
    if inputs.plain is None:
        patch, logits = compute_batched_patch(network, module_names, inputs.wrapped, final_hidden, head_model,
                                              key_mask=inputs.wrapped_keys, by_length=by_length)
        return patch, logits, torch.exp(-score_answers(logits, inputs.wrapped).mean_nll)
    both, keys, rows = keyed_batch(inputs, pad_id)
    patch, logits = compute_batched_patch(network, module_names, both, final_hidden, head_model,
                                          key_mask=keys, by_length=by_length)
    held = torch.exp(-score_answers(logits, both).mean_nll).view(2, rows).min(0).values
    return patch.join_halves(), logits[: inputs.wrapped.answer_tokens.numel()], held


def scheduled_patch_from_inputs(network: MendNetwork, module_names: Sequence[str], inputs: EditInputs,
                                final_hidden: HiddenFn, head_model, schedule: EditSchedule,
                                pad_id: int = 0, active: Sequence[Patch] = (),
                                ) -> tuple[Patch, torch.Tensor]:
    """:func:`patch_from_inputs` run ``schedule.steps`` times, each pass with ``active`` and the
    earlier passes applied, every pass scaled by ``schedule.strength``; the passes' factors are
    joined along the rank axis (one patch). With ``schedule.until``, an edit whose target already
    holds at that probability before a later pass takes no more passes (its rows of those passes
    are zero; when every edit holds, the passes end). Returns the answer logits of the first
    (unpatched by this edit) pass."""
    passes: list[Patch] = []
    first_logits = None
    rows = inputs.wrapped.size
    going = torch.ones(rows, dtype=torch.bool, device=inputs.wrapped.input_ids.device)
    # an editor that edits from the wrapped and the plain input runs both halves in one batch:
    # each earlier pass then acts on its edit's two rows
    if inputs.plain is not None:
        both_halves = torch.arange(rows, device=inputs.wrapped.input_ids.device).repeat(2)
    for step in range(schedule.steps):
        earlier = passes if inputs.plain is None else [p.select_rows(both_halves) for p in passes]
        with PatchEngine.activate([*active, *earlier]):
            patch, logits, held = edit_pass(network, module_names, inputs, final_hidden,
                                            head_model, pad_id=pad_id)
        if first_logits is None:
            first_logits = logits
        if step > 0 and schedule.until is not None:
            going &= held.to(going.device) < float(schedule.until)
            if not bool(going.any()):
                log.debug("every edit holds after %d of %d passes", step, schedule.steps)
                break
        patch = patch.detach().scaled(float(schedule.strength))
        if schedule.rekey:
            patch = rekey_on_inputs(patch, network, module_names, inputs, head_model, pad_id, active, passes)
        if not bool(going.all()):
            patch = patch.rows_masked(going)
        passes.append(patch)
    return join_patch_passes(passes), first_logits


REKEY_CONTEXTS = (5, 10)
"""Context prefixes a re-keyed edit also answers its subject after: how many, tokens each (ROME's)."""


def rekey_contexts(backbone: Backbone, schedule: EditSchedule) -> tuple[str, ...]:
    """The context prefixes an edit made by ``schedule`` is re-keyed on (none without re-keying)."""
    return context_prefixes(backbone, *REKEY_CONTEXTS) if schedule.rekey else ()


def keyed_batch(inputs: EditInputs, pad_id: int) -> tuple[AnswerBatch, torch.Tensor, int]:
    """The batch edits are computed from (wrapped rows, then plain rows when the editor edits from
    both), its key positions, and the number of edits."""
    rows = inputs.wrapped.size
    if inputs.plain is None:
        keys = inputs.wrapped_keys if inputs.wrapped_keys is not None else inputs.wrapped.attention_mask
        return inputs.wrapped, keys.bool(), rows
    both = concat_batches(inputs.wrapped, inputs.plain, pad_id=pad_id)
    width = both.input_ids.shape[1]
    wrapped_keys = (inputs.wrapped_keys if inputs.wrapped_keys is not None
                    else inputs.wrapped.attention_mask.bool())
    plain_keys = (inputs.plain_keys if inputs.plain_keys is not None
                  else inputs.plain.attention_mask.bool())

    def widen(mask: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.pad(mask.bool(), (0, width - mask.shape[1]), value=False)

    return both, torch.cat([widen(wrapped_keys), widen(plain_keys)]), rows


def rekey_on_inputs(patch: Patch, network: MendNetwork, module_names: Sequence[str], inputs: EditInputs,
                    model, pad_id: int = 0, active: Sequence[Patch] = (), earlier: Sequence[Patch] = (),
                    ) -> Patch:
    """``patch`` (one row per edit of ``inputs``) re-keyed on each edit's keyed inputs as the
    edited model computes them (:mod:`.rekey`): with ``active`` (unbatched, every row), the
    ``earlier`` passes of the same edits (batched like ``patch``) and ``patch`` applied."""
    batch, keys, rows = keyed_batch(inputs, pad_id)
    device = batch.input_ids.device
    per_row: dict[str, list[list[torch.Tensor]]] = {name: [[] for _ in range(rows)] for name in module_names}
    parts = [(batch, keys, torch.arange(rows, device=device).repeat(batch.size // rows))]
    if inputs.contexts is not None:
        context_keys = (inputs.context_keys if inputs.context_keys is not None
                        else inputs.contexts.attention_mask).bool()
        parts.append((inputs.contexts, context_keys,
                      torch.arange(rows, device=device).repeat_interleave(inputs.contexts.size // rows)))
    for part, part_keys, owners in parts:
        with PatchEngine.activate([*active, *(p.select_rows(owners) for p in (*earlier, patch))]):
            captured = capture_module_inputs(model, module_names, part.input_ids, part.attention_mask)
        for name, x in captured.items():
            for r, owner in enumerate(owners.tolist()):
                per_row[name][owner].append(x[r][part_keys[r]])
    keyed = {name: [torch.cat(chunks) for chunks in by_row] for name, by_row in per_row.items()}
    # without whitening (an editor trained without preconditioners) the metric is the identity
    identity = {name: torch.eye(layer.u.shape[-1], device=device) for name, layer in patch.layers.items()
                if name not in network.preconditioners}
    inverses = {**identity, **network.preconditioners}
    return rekey_patch(patch, keyed, inverses)


def join_patch_passes(passes: Sequence[Patch]) -> Patch:
    """One patch that sums ``passes`` (same modules, all batched or all not): each module's
    factors side by side along the rank axis, each pass's scale folded into its ``D``."""
    if len(passes) == 1:
        return passes[0]
    return Patch({name: concat_layer_patches([p.layers[name] for p in passes]) for name in passes[0].layers})


def unbatch_patch(patch: Patch, row: int) -> Patch:
    """The single-row patch of ``row`` with all-zero factor rows dropped."""
    layers = {}
    for name, layer in patch.layers.items():
        u, d = layer.u[row], layer.d[row]
        keep = (u.abs().sum(-1) > 0) | (d.abs().sum(-1) > 0)
        layers[name] = LayerPatch(u[keep].detach(), d[keep].detach(), layer.scale.detach())
    return Patch(layers)


class Editor:
    """An instruction-conditioned MEND editor bound to one backbone.

    Build one with :meth:`from_pretrained` (a trained checkpoint) or :meth:`untrained` (an
    identity network: one plain gradient step of a given size).
    """

    def __init__(self, backbone: Backbone, network: MendNetwork, *, name: str = "editor",
                 use_instructions: bool = True, metadata: dict | None = None,
                 patch_rank: int | None = DEFAULT_PATCH_RANK,
                 schedule: EditSchedule | None = None) -> None:
        if patch_rank is not None and patch_rank < 1:
            raise ValueError(f"patch_rank must be at least 1 (or None for full rank), got {patch_rank}")
        self.backbone = backbone
        self.patch_rank = patch_rank
        self.network = network.to(backbone.device).eval()
        self.network.requires_grad_(False)
        self.name = name
        self.use_instructions = use_instructions
        self.metadata = metadata or {}
        self.schedule = (schedule if schedule is not None
                         else EditSchedule.from_dict(self.metadata.get("edit_schedule")))
        self.module_names = list(network.module_names)
        self.engine = PatchEngine.for_model(backbone.model, self.module_names)
        if not network.preconditioners:
            attach_preconditioners(network, backbone)

    # ----- construction -------------------------------------------------------------------
    @staticmethod
    def module_shapes(backbone: Backbone, module_names: Sequence[str]) -> dict[str, tuple[int, int]]:
        return {n: backbone.adapter.in_out_features(backbone.module(n)) for n in module_names}

    @classmethod
    def untrained(cls, backbone: Backbone, step_size: float = 1e-3, *, normalize: bool = False,
                  last_n_layers: int = 3, use_instructions: bool = True, rank: int = 8,
                  patch_rank: int | None = None) -> Editor:
        """An identity editor: with ``normalize=False`` its patch is ``-step_size * grad``.

        Its patches are kept at full rank by default, so it is exactly one plain gradient step.
        """
        names = backbone.edited_module_names(last_n_layers)
        config = EditorConfig(rank=rank, n_blocks=1, init_lr=step_size, normalize=normalize)
        network = MendNetwork(cls.module_shapes(backbone, names), config)
        return cls(backbone, network, name=f"gradient-step({step_size:g})",
                   use_instructions=use_instructions, patch_rank=patch_rank)

    @classmethod
    def from_pretrained(cls, path, backbone: Backbone, *, strict: bool = True,
                        patch_rank: int | None = DEFAULT_PATCH_RANK) -> Editor:
        """Load a checkpoint folder, validated against ``backbone`` (see :mod:`.checkpoint`).

        ``patch_rank``: each edit's per-module update is stored as its best rank-k approximation
        (None keeps the full update; see ``DEFAULT_PATCH_RANK``).
        """
        network, meta = load_editor_checkpoint(path, backbone, strict=strict)
        try:
            EditSchedule.from_dict(meta.get("edit_schedule"))
        except ValueError as exc:
            raise CheckpointError(f"{path}: edit_schedule: {exc}") from None
        return cls(backbone, network, name=meta.get("name", str(path)),
                   use_instructions=bool(meta.get("use_instructions", True)), metadata=meta,
                   patch_rank=patch_rank)

    def with_patch_rank(self, patch_rank: int | None) -> Editor:
        """The same editor (shared network) storing its edits at ``patch_rank`` (None: full)."""
        return Editor(self.backbone, self.network, name=self.name,
                      use_instructions=self.use_instructions, metadata=self.metadata,
                      patch_rank=patch_rank, schedule=self.schedule)

    def with_schedule_overrides(self, steps: int | None = None, strength: float | None = None,
                                rekey: bool | None = None, until: float | None = None) -> Editor:
        """This editor with ``steps``/``strength``/``rekey``/``until`` replacing its schedule's
        (``None``: kept; see :meth:`EditSchedule.with_overrides`); ``ValueError`` for values out
        of range."""
        if steps is None and strength is None and rekey is None and until is None:
            return self
        return self.with_schedule(self.schedule.with_overrides(steps, strength, rekey, until))

    def with_schedule(self, schedule: EditSchedule) -> Editor:
        """The same editor (shared network) applying its updates by ``schedule``."""
        return Editor(self.backbone, self.network, name=self.name,
                      use_instructions=self.use_instructions, metadata=self.metadata,
                      patch_rank=self.patch_rank, schedule=schedule)

    def save_pretrained(self, path, provenance: dict | None = None) -> None:
        save_editor_checkpoint(path, self.network, self.backbone, name=self.name,
                               use_instructions=self.use_instructions, provenance=provenance,
                               edit_schedule=None if self.schedule.is_default else self.schedule.to_dict())

    # ----- editing --------------------------------------------------------------------------
    @property
    def keyed_on_subject(self) -> bool:
        return self.network.config.key_on == KEY_ON_SUBJECT

    def full_hidden(self, batch: AnswerBatch) -> torch.Tensor:
        model = self.backbone.model
        batch = batch.to(self.backbone.device)
        return model.base_model(input_ids=batch.input_ids,
                                attention_mask=batch.attention_mask).last_hidden_state

    def edit(self, request: EditRequest, active: Sequence[Edit] = ()) -> Edit:
        """Compute the edit of ``request`` with ``active`` edits applied (they stack).

        Raises :class:`EditError` for bad input and
        :class:`~instructedit.editing.patches.NonFiniteEditError` for a NaN/inf result; in both cases
        nothing changes.
        """
        start = time.perf_counter()
        validate_request(request, self.backbone.tokenizer)
        if self.keyed_on_subject and not (request.subject or request.topic):
            guess = guess_subject(request.prompt)
            if guess:  # as the studio and the command line would: never every token by omission
                log.info("no subject given: the update is keyed on the guessed subject %r", guess)
                request = replace(request, subject=guess)
        wrapped = request.edit_input(self.use_instructions)
        inputs = tokenize_edit_inputs(self.backbone.tokenizer, self.network, [wrapped],
                                      [request.prompt], [request.target], [request.subject or request.topic],
                                      contexts=rekey_contexts(self.backbone, self.schedule),
                                      ).to(self.backbone.device)
        batched, _ = scheduled_patch_from_inputs(self.network, self.module_names, inputs,
                                                 self.full_hidden, self.backbone.model, self.schedule,
                                                 pad_id=self.backbone.tokenizer.pad_token_id or 0,
                                                 active=[e.patch for e in active])
        patch = unbatch_patch(batched, 0)
        patch.check_finite()
        patch = patch.truncated(self.patch_rank)
        latency = (time.perf_counter() - start) * 1000
        return Edit(request, wrapped, patch, self.name, self.backbone.model_id, latency)
