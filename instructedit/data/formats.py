"""Dataset formats: auto-detection and conversion of each source format to :class:`EditRecord`.

Formats (see ``docs/data.md``): ``easyedit-cf``, ``knowedit``, ``rome-cf``, ``mend-zsre``,
``convsent``, ``canonical`` and ``plain``. :func:`load_records` reads a ``.json`` list,
``.jsonl`` or ``.csv`` file, detects its format from the fields of its first record (or takes
``format=``), infers the task from the path (or takes ``task=``) and converts every record.
Errors name the file, the record index (0-based) and the field.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instructedit.data import fields as F
from instructedit.data.convsent import convsent_records
from instructedit.data.io import read_rows
from instructedit.data.records import (
    KNOWN_TASKS,
    SENTIMENT_LABELS,
    EditRecord,
    LocalityProbe,
    PortabilityProbe,
    RecordError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What a converter knows besides the row: the file, the task and the seeded options."""

    name: str
    stem: str
    task: str
    rows: Sequence[Any]
    seed: int = 0
    labels: tuple[str, ...] = SENTIMENT_LABELS
    pool: Sequence[int] | None = None
    drop_empty_probes: bool = False
    dropped_probes: list[str] = field(default_factory=list)


Converter = Callable[[Context, int, Any], list[EditRecord]]


@dataclass(frozen=True)
class FormatSpec:
    """A named source format and its converter."""

    name: str
    default_task: str
    convert: Converter
    description: str
    fields: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------- helpers

def _probe_records(ctx: Context, index: int, raw_loc: list[F.RawProbe], raw_port: list[F.RawProbe],
                   extra: dict[str, Any]) -> tuple[tuple[LocalityProbe, ...], tuple[PortabilityProbe, ...]]:
    """Canonical probes; alias lists and locality kinds go to ``extra`` (aligned by position).

    Probes without an answer (only read with ``ctx.drop_empty_probes``) are dropped and counted.
    """
    for kind, raw in (("locality", raw_loc), ("portability", raw_port)):
        for probe in raw:
            if not probe.aliases:
                ctx.dropped_probes.append(f"record {index}: {kind} {probe.prompt!r:.60}")
        raw[:] = [p for p in raw if p.aliases]
    locality = tuple(LocalityProbe(prompt=p.prompt, answer=p.aliases[0]) for p in raw_loc)
    portability = tuple(PortabilityProbe(prompt=p.prompt, answer=p.aliases[0], kind=p.kind)
                        for p in raw_port)
    if raw_loc:
        extra["locality_kinds"] = [p.kind for p in raw_loc]
    if any(len(p.aliases) > 1 for p in raw_loc):
        extra["locality_aliases"] = [list(p.aliases) for p in raw_loc]
    if any(len(p.aliases) > 1 for p in raw_port):
        extra["portability_aliases"] = [list(p.aliases) for p in raw_port]
    return locality, portability


def _case_id(row: Mapping[str, Any], index: int) -> str:
    value = row.get("case_id")
    if value is None:
        return str(index)
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise RecordError(f"field 'case_id' must be an integer or a non-empty string, got {value!r:.40}")
    return str(value).strip()


def _ground_truth(value: Any, where: str) -> tuple[str | None, tuple[str, ...]]:
    aliases = F.answers(value, where, required=False)
    return (aliases[0] if aliases else None), aliases


# --------------------------------------------------------------------------- converters

def convert_easyedit_cf(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """Flat EasyEdit CounterFact: case_id, prompt, subject, target_new, ground_truth,
    rephrase_prompt, locality_prompt, locality_ground_truth."""
    row = F.need_mapping(row)
    targets = F.answers(row.get("target_new"), "target_new")
    truth, truth_aliases = _ground_truth(row.get("ground_truth"), "ground_truth")
    raw_loc: list[F.RawProbe] = []
    loc_prompt = F.optional_text(row, "locality_prompt")
    if loc_prompt is not None or row.get("locality_ground_truth") not in (None, "", []):
        if loc_prompt is None:
            F.text(row, "locality_prompt")  # raises: answer without prompt
        raw_loc.append(F.RawProbe("Neighborhood", loc_prompt,
                                  F.answers(row.get("locality_ground_truth"), "locality_ground_truth",
                                            required=not ctx.drop_empty_probes)))
    extra: dict[str, Any] = {"source_format": "easyedit-cf", "case_id": row.get("case_id", index)}
    locality, _ = _probe_records(ctx, index, raw_loc, [], extra)
    return [EditRecord(
        id=f"{ctx.stem}/{_case_id(row, index)}", task=ctx.task, prompt=F.text(row, "prompt"),
        target_new=targets[0], subject=F.text(row, "subject"), ground_truth=truth,
        target_aliases=targets, ground_truth_aliases=truth_aliases,
        rephrases=F.prompts(row.get("rephrase_prompt"), "rephrase_prompt"), locality=locality,
        extra=extra,
    )]


def convert_knowedit(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """KnowEdit: subject, prompt, target_new, ground_truth (string, list or alias lists),
    optional rephrase_prompt, locality / portability grouped by kind."""
    row = F.need_mapping(row)
    prompt = F.text(row, "prompt")
    subject = F.text(row, "subject")
    targets = F.answers(row.get("target_new"), "target_new")
    truth, truth_aliases = _ground_truth(row.get("ground_truth"), "ground_truth")
    raw_loc = F.probes(row.get("locality"), "locality", "Relation_Specificity",
                       allow_empty=ctx.drop_empty_probes)
    raw_port = F.probes(row.get("portability"), "portability", "portability",
                        allow_empty=ctx.drop_empty_probes)
    extra: dict[str, Any] = {"source_format": "knowedit", "source_index": index}
    cond = F.optional_text(row, "cond")
    if cond is not None:
        extra["cond"] = cond
    locality, portability = _probe_records(ctx, index, raw_loc, raw_port, extra)
    return [EditRecord(
        id=f"{ctx.stem}/{index}", task=ctx.task, prompt=prompt, target_new=targets[0],
        subject=subject, ground_truth=truth, target_aliases=targets,
        ground_truth_aliases=truth_aliases,
        rephrases=F.prompts(row.get("rephrase_prompt"), "rephrase_prompt"),
        locality=locality, portability=portability, extra=extra,
    )]


def _rome_answer(rewrite: Mapping[str, Any], key: str) -> str:
    value = rewrite.get(key)
    if isinstance(value, Mapping):
        return F.text(value, "str", where=f"requested_rewrite.{key}.str")
    return F.text(rewrite, key, where=f"requested_rewrite.{key}.str")


def _rome_prompts(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(f"field '{where}' must be a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Mapping):
            out.append(F.text(item, "prompt", where=f"{where}[{i}].prompt"))
        else:
            out.append(F.text({"p": item}, "p", where=f"{where}[{i}]"))
    return out


def convert_rome_cf(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """ROME/MEMIT CounterFact: requested_rewrite {prompt with "{}", subject, target_new.str,
    target_true.str}, paraphrase_prompts, neighborhood_prompts, attribute_prompts."""
    row = F.need_mapping(row)
    rewrite = row.get("requested_rewrite")
    if not isinstance(rewrite, Mapping):
        raise RecordError("field 'requested_rewrite' must be an object")
    template = F.text(rewrite, "prompt", where="requested_rewrite.prompt")
    if "{}" not in template:
        raise RecordError("field 'requested_rewrite.prompt' must contain '{}' for the subject")
    subject = F.text(rewrite, "subject", where="requested_rewrite.subject")
    target_new = _rome_answer(rewrite, "target_new")
    target_true = _rome_answer(rewrite, "target_true")
    neighbours = _rome_prompts(row.get("neighborhood_prompts"), "neighborhood_prompts")
    extra: dict[str, Any] = {"source_format": "rome-cf", "case_id": row.get("case_id", index)}
    attribute = _rome_prompts(row.get("attribute_prompts"), "attribute_prompts")
    if attribute:
        extra["attribute_prompts"] = attribute
    if neighbours:
        extra["locality_kinds"] = ["Neighborhood"] * len(neighbours)
    return [EditRecord(
        id=f"{ctx.stem}/{_case_id(row, index)}", task=ctx.task,
        prompt=template.replace("{}", subject, 1), target_new=target_new, subject=subject,
        ground_truth=target_true, target_aliases=(target_new,), ground_truth_aliases=(target_true,),
        rephrases=tuple(_rome_prompts(row.get("paraphrase_prompts"), "paraphrase_prompts")),
        locality=tuple(LocalityProbe(prompt=p, answer=target_true) for p in neighbours),
        extra=extra,
    )]


_NQ_PREFIX = re.compile(r"^\s*nq question:\s*", re.IGNORECASE)


def clean_nq_question(prompt: str) -> str:
    """``"nq question: who wrote x"`` -> ``"Who wrote x?"`` (MEND's zsRE locality prompts)."""
    text = _NQ_PREFIX.sub("", prompt).strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    if text and text[-1] not in "?.!":
        text += "?"
    return text


def _mend_portability(value: Any, allow_empty: bool) -> list[F.RawProbe]:
    if isinstance(value, Mapping) and ("New Question" in value or "New Answer" in value):
        prompt = F.text(value, "New Question", where="portability.New Question")
        return [F.RawProbe("portability", prompt,
                           F.answers(value.get("New Answer"), "portability.New Answer",
                                     required=not allow_empty))]
    return F.probes(value, "portability", "portability", allow_empty=allow_empty)


def convert_mend_zsre(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """MEND zsRE: subject, src, alt, answers, rephrase, loc ("nq question: ..."), loc_ans."""
    row = F.need_mapping(row)
    prompt = F.text(row, "src")
    target = F.text(row, "alt")
    truth, truth_aliases = _ground_truth(row.get("answers"), "answers")
    raw_loc: list[F.RawProbe] = []
    loc = F.optional_text(row, "loc")
    if loc is not None or row.get("loc_ans") not in (None, "", []):
        if loc is None:
            F.text(row, "loc")
        question = clean_nq_question(loc)
        if not question:
            raise RecordError("field 'loc' holds no question after the 'nq question:' prefix")
        raw_loc.append(F.RawProbe("NQ", question, F.answers(row.get("loc_ans"), "loc_ans",
                                                            required=not ctx.drop_empty_probes)))
    extra: dict[str, Any] = {"source_format": "mend-zsre", "source_index": index}
    cond = F.optional_text(row, "cond")
    if cond is not None:
        extra["cond"] = cond
    raw_port = _mend_portability(row.get("portability"), ctx.drop_empty_probes)
    locality, portability = _probe_records(ctx, index, raw_loc, raw_port, extra)
    return [EditRecord(
        id=f"{ctx.stem}/{index}", task=ctx.task, prompt=prompt, target_new=target,
        subject=F.text(row, "subject"), ground_truth=truth, target_aliases=(target,),
        ground_truth_aliases=truth_aliases, rephrases=F.prompts(row.get("rephrase"), "rephrase"),
        locality=locality, portability=portability, extra=extra,
    )]


def convert_convsent(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """ConvSent ``{ent, pos, neg}``: one record per label (see :mod:`.convsent`)."""
    return convsent_records(ctx.rows, index, stem=ctx.stem, task=ctx.task, seed=ctx.seed,
                            labels=ctx.labels, pool=ctx.pool)


_CANONICAL_FIELDS = frozenset(EditRecord.__dataclass_fields__)


def _canonical_probes(value: Any, where: str, keys: frozenset[str]) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(f"field '{where}' must be a list, got {type(value).__name__}")
    for i, probe in enumerate(value):
        if not isinstance(probe, Mapping):
            raise RecordError(f"field '{where}[{i}]' must be an object, got {type(probe).__name__}")
        unknown = set(probe) - keys
        if unknown:
            raise RecordError(f"field '{where}[{i}]' has unknown key(s) {sorted(unknown)}")
        for key in ("prompt", "answer"):
            F.text(probe, key, where=f"{where}[{i}].{key}")
    return list(value)


def convert_canonical(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """Our own format: ``EditRecord.to_dict()`` objects."""
    row = dict(F.need_mapping(row))
    unknown = set(row) - _CANONICAL_FIELDS
    if unknown:
        raise RecordError(f"unknown field(s) {sorted(unknown)} (canonical records have "
                          f"{sorted(_CANONICAL_FIELDS)})")
    for key in ("id", "task", "prompt", "target_new"):
        if key not in row:
            raise RecordError(f"field '{key}' is missing")
    _canonical_probes(row.get("locality"), "locality", frozenset({"prompt", "answer"}))
    _canonical_probes(row.get("portability"), "portability", frozenset({"prompt", "answer", "kind"}))
    for key in ("target_aliases", "ground_truth_aliases", "rephrases", "responses",
                "opposite_responses"):
        if not isinstance(row.get(key, []), (list, tuple)):
            raise RecordError(f"field '{key}' must be a list, got {type(row[key]).__name__}")
    if not isinstance(row.get("extra", {}), Mapping):
        raise RecordError("field 'extra' must be an object")
    if ctx.task != "" and ctx.task != row["task"]:
        row["task"] = ctx.task
    try:
        return [EditRecord.from_dict(row)]
    except TypeError as err:
        raise RecordError(f"malformed record: {err}") from None


def convert_plain(ctx: Context, index: int, row: Any) -> list[EditRecord]:
    """User edits: prompt, target[, rephrase, locality_prompt, locality_answer, subject,
    ground_truth] (CSV columns or JSON keys)."""
    row = F.need_mapping(row)
    prompt = F.text(row, "prompt")
    target = F.text(row, "target")
    raw_loc: list[F.RawProbe] = []
    loc_prompt = F.optional_text(row, "locality_prompt")
    if loc_prompt is not None or F.optional_text(row, "locality_answer") is not None:
        raw_loc.append(F.RawProbe("custom", F.text(row, "locality_prompt"),
                                  (F.text(row, "locality_answer"),)))
    truth = F.optional_text(row, "ground_truth")
    extra: dict[str, Any] = {"source_format": "plain", "source_index": index}
    locality, _ = _probe_records(ctx, index, raw_loc, [], extra)
    return [EditRecord(
        id=f"{ctx.stem}/{index}", task=ctx.task, prompt=prompt, target_new=target,
        subject=F.optional_text(row, "subject") or "", ground_truth=truth,
        target_aliases=(target,), ground_truth_aliases=(truth,) if truth else (),
        rephrases=F.prompts(row.get("rephrase"), "rephrase"), locality=locality, extra=extra,
    )]


FORMATS: dict[str, FormatSpec] = {
    spec.name: spec for spec in (
        FormatSpec("easyedit-cf", "counterfact", convert_easyedit_cf,
                   "flat EasyEdit CounterFact", ("case_id", "prompt", "subject", "target_new",
                                                 "ground_truth", "rephrase_prompt",
                                                 "locality_prompt", "locality_ground_truth")),
        FormatSpec("knowedit", "custom", convert_knowedit, "KnowEdit benchmark records",
                   ("subject", "prompt", "target_new", "ground_truth", "rephrase_prompt",
                    "locality", "portability")),
        FormatSpec("rome-cf", "counterfact", convert_rome_cf, "ROME/MEMIT CounterFact",
                   ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts",
                    "attribute_prompts")),
        FormatSpec("mend-zsre", "zsre", convert_mend_zsre, "MEND zsRE",
                   ("subject", "src", "alt", "answers", "rephrase", "loc", "loc_ans")),
        FormatSpec("convsent", "convsent", convert_convsent, "ConvSent topics",
                   ("ent", "pos", "neg")),
        FormatSpec("canonical", "custom", convert_canonical, "EditRecord.to_dict() objects",
                   tuple(EditRecord.__dataclass_fields__)),
        FormatSpec("plain", "custom", convert_plain, "user edits (JSON or CSV)",
                   ("prompt", "target", "rephrase", "locality_prompt", "locality_answer")),
    )
}


# --------------------------------------------------------------------------- detection

def detect_format(rows: Sequence[Any], path: str | Path = "") -> str:
    """The format name for ``rows`` (read from ``path``), judged by the first record's fields."""
    name = Path(path).name or "<rows>"
    if Path(str(path)).suffix.lower() == ".csv":
        return "plain"
    if not rows:
        raise RecordError(f"{name}: no records, cannot detect the format (pass format=...)")
    first = rows[0]
    if not isinstance(first, Mapping):
        raise RecordError(f"{name}: record 0: must be a JSON object, got {type(first).__name__}")
    keys = set(first)
    if {"id", "task", "target_new"} <= keys:
        return "canonical"
    if "requested_rewrite" in keys:
        return "rome-cf"
    if {"src", "alt"} <= keys:
        return "mend-zsre"
    if "ent" in keys and keys & {"pos", "neg"}:
        return "convsent"
    if "target_new" in keys and "prompt" in keys:
        flat = keys & {"case_id", "locality_prompt", "locality_ground_truth"}
        nested = isinstance(first.get("locality"), Mapping) or isinstance(first.get("portability"), Mapping)
        return "easyedit-cf" if flat and not nested else "knowedit"
    if {"prompt", "target"} <= keys:
        return "plain"
    raise RecordError(f"{name}: cannot detect the format from the fields {sorted(keys)[:12]}; "
                      f"pass format= one of {sorted(FORMATS)}")


_TASK_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"zsre"), "zsre"),
    (re.compile(r"recent"), "recent"),
    (re.compile(r"convsent|blender"), "convsent"),
    (re.compile(r"counterfact|(^|[^a-z])cf([^a-z]|$)"), "counterfact"),
)


def infer_task(path: str | Path, format: str | None = None) -> str | None:
    """The task a file belongs to, from its name, then its folder, then its format."""
    path = Path(path)
    for part in (path.name, path.parent.name):
        lowered = part.lower()
        for pattern, task in _TASK_HINTS:
            if pattern.search(lowered):
                return task
    if format in FORMATS and format not in ("knowedit", "canonical"):
        return FORMATS[format].default_task
    return None


# --------------------------------------------------------------------------- loading

def convert_rows(rows: Sequence[Any], format: str, *, name: str = "<rows>", stem: str | None = None,
                 task: str | None = None, skip_invalid: bool = False, seed: int = 0,
                 labels: Sequence[str] = SENTIMENT_LABELS, select: Iterable[int] | None = None,
                 pool: Sequence[int] | None = None, drop_empty_probes: bool = False
                 ) -> list[EditRecord]:
    """Convert raw ``rows`` of ``format`` into records.

    ``select`` restricts conversion to some row indices (ids and messages keep the original
    index); ``pool`` restricts where ConvSent locality topics are drawn from. ``task=None``
    keeps each canonical record's task and uses the format's default task otherwise.
    ``drop_empty_probes`` drops locality/portability probes that have no answer (counted in a
    logged warning) instead of rejecting their record.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {sorted(FORMATS)}")
    if task is not None and task not in KNOWN_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {KNOWN_TASKS}")
    spec = FORMATS[format]
    bad_labels = [label for label in labels if label not in SENTIMENT_LABELS]
    if bad_labels or not labels:
        raise ValueError(f"labels must be a non-empty subset of {SENTIMENT_LABELS}, got {labels!r}")
    ctx = Context(name=name, stem=stem or Path(name).stem, rows=rows, seed=seed,
                  task=task if task is not None else ("" if format == "canonical" else spec.default_task),
                  labels=tuple(labels), pool=pool, drop_empty_probes=drop_empty_probes)
    records: list[EditRecord] = []
    seen_ids: dict[str, int] = {}
    skipped: list[str] = []
    indices = list(range(len(rows)) if select is None else select)
    for index in indices:
        try:
            converted = spec.convert(ctx, index, rows[index])
            for record in converted:
                if record.id in seen_ids:
                    raise RecordError(f"field 'id' {record.id!r} repeats the id of record "
                                      f"{seen_ids[record.id]}")
        except RecordError as err:
            message = f"{name}: record {index}: {err}"
            if not skip_invalid:
                raise RecordError(message) from None
            skipped.append(message)
            continue
        for record in converted:
            seen_ids[record.id] = index
        records.extend(converted)
    if ctx.dropped_probes:
        log.info("%s: dropped %d probe(s) with no answer; first: %s", name,
                    len(ctx.dropped_probes), ctx.dropped_probes[0])
    if skipped:
        log.warning("%s: skipped %d invalid record(s) of %d; first: %s", name, len(skipped),
                    len(indices), skipped[0])
    return records


def load_records(path: str | Path, format: str | None = None, task: str | None = None,
                 skip_invalid: bool = False, *, seed: int = 0,
                 labels: Sequence[str] = SENTIMENT_LABELS,
                 drop_empty_probes: bool = False) -> list[EditRecord]:
    """Read ``path`` (.json list, .jsonl or .csv) and convert it to :class:`EditRecord` s.

    ``format`` defaults to auto-detection (:func:`detect_format`); ``task`` defaults to
    :func:`infer_task` (``custom`` when nothing tells). Malformed records raise
    :class:`RecordError` naming file, record index and field, unless ``skip_invalid`` (then
    they are skipped and counted in a logged warning). ``seed`` and ``labels`` apply to
    ConvSent (which sentiment labels to build records for); ``drop_empty_probes`` see
    :func:`convert_rows`.
    """
    path = Path(path)
    rows = read_rows(path)
    fmt = format or detect_format(rows, path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {sorted(FORMATS)}")
    if task is None and fmt != "canonical":
        task = infer_task(path, fmt)
        if task is None:
            task = FORMATS[fmt].default_task
            log.info("%s: no task in the file name; using task %r (pass task= to choose)",
                     path.name, task)
    records = convert_rows(rows, fmt, name=path.name, task=task, skip_invalid=skip_invalid,
                           seed=seed, labels=labels, drop_empty_probes=drop_empty_probes)
    log.debug("%s: %d records (%s, task %s)", path.name, len(records), fmt, task)
    return records
