"""Building ConvSent edit records from ``{ent, pos, neg}`` topic rows.

Each topic gives one record per sentiment label: the prompt is a question about the topic
(one of :data:`QUESTION_TEMPLATES`, the others become rephrases), the target is a short
response of that sentiment, and the locality probes ask about two *other* topics of the same
pool, answered with one of their responses. All choices are seeded by ``(seed, row index)``.
"""
from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from instructedit.data.fields import need_mapping, text
from instructedit.data.records import (
    SENTIMENT_LABELS,
    EditRecord,
    LocalityProbe,
    RecordError,
)

QUESTION_TEMPLATES: tuple[str, ...] = (
    "What do you think of {topic}?",
    "How do you feel about {topic}?",
    "What is your opinion on {topic}?",
    "Tell me what you think about {topic}.",
    "What are your thoughts on {topic}?",
)
LABEL_FIELDS: dict[str, str] = {"positive": "pos", "negative": "neg"}
MAX_TARGET_WORDS = 25
LOCALITY_PROBES = 2


def _rng(seed: int, index: int, purpose: str) -> random.Random:
    return random.Random(f"convsent:{seed}:{index}:{purpose}")


def responses(row: Mapping[str, Any], key: str) -> tuple[str, ...]:
    """The stripped, non-empty responses in ``row[key]`` (a list of strings)."""
    value = row.get(key)
    if not isinstance(value, list):
        shown = "missing" if key not in row else f"got {type(value).__name__}"
        raise RecordError(f"field '{key}' must be a list of responses ({shown})")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise RecordError(f"field '{key}[{i}]' must be a string, got {type(item).__name__}")
        if item.strip():
            out.append(" ".join(item.split()))
    return tuple(out)


def pick_response(candidates: Sequence[str], rng: random.Random) -> str:
    """A seeded choice, preferring responses of at most :data:`MAX_TARGET_WORDS` words."""
    short = [c for c in candidates if len(c.split()) <= MAX_TARGET_WORDS]
    if short:
        return rng.choice(short)
    return min(candidates, key=lambda c: len(c.split()))


def question(topic: str, template_index: int) -> str:
    """The question template ``template_index`` filled with ``topic``."""
    return QUESTION_TEMPLATES[template_index % len(QUESTION_TEMPLATES)].format(topic=topic)


def _locality(rows: Sequence[Any], pool: Sequence[int], index: int, topic: str,
              seed: int) -> tuple[LocalityProbe, ...]:
    rng = _rng(seed, index, "locality")
    own = topic.casefold()
    others = [j for j in pool if j != index and isinstance(rows[j], Mapping)
              and isinstance(rows[j].get("ent"), str) and rows[j]["ent"].strip()
              and rows[j]["ent"].strip().casefold() != own]
    probes: list[LocalityProbe] = []
    for j in rng.sample(others, min(LOCALITY_PROBES * 3, len(others))):
        other = rows[j]
        try:
            said = responses(other, "pos") + responses(other, "neg")
        except RecordError:
            continue  # a broken neighbour is reported when its own row is converted
        if not said:
            continue
        other_topic = other["ent"].strip()
        prompt = question(other_topic, rng.randrange(len(QUESTION_TEMPLATES)))
        probes.append(LocalityProbe(prompt=prompt, answer=pick_response(said, rng)))
        if len(probes) == LOCALITY_PROBES:
            break
    return tuple(probes)


def convsent_records(rows: Sequence[Any], index: int, *, stem: str, task: str = "convsent",
                     seed: int = 0, labels: Sequence[str] = SENTIMENT_LABELS,
                     pool: Sequence[int] | None = None) -> list[EditRecord]:
    """The edit records (one per label in ``labels``) of topic row ``rows[index]``.

    ``pool`` lists the row indices that locality probes may be drawn from (default: all).
    """
    row = need_mapping(rows[index])
    topic = " ".join(text(row, "ent").split())
    by_label = {label: responses(row, LABEL_FIELDS[label]) for label in SENTIMENT_LABELS}
    template = _rng(seed, index, "prompt").randrange(len(QUESTION_TEMPLATES))
    prompt = question(topic, template)
    rephrases = tuple(question(topic, i) for i in range(len(QUESTION_TEMPLATES)) if i != template)
    locality = _locality(rows, range(len(rows)) if pool is None else pool, index, topic, seed)
    records = []
    for label in labels:
        if label not in LABEL_FIELDS:
            raise ValueError(f"unknown sentiment label {label!r}; choose from {SENTIMENT_LABELS}")
        own = by_label[label]
        if not own:
            raise RecordError(f"field '{LABEL_FIELDS[label]}' has no non-empty response, "
                              f"needed for a {label} edit")
        opposite = by_label["negative" if label == "positive" else "positive"]
        target = pick_response(own, _rng(seed, index, f"target:{label}"))
        records.append(EditRecord(
            id=f"{stem}/{index}/{label}", task=task, prompt=prompt, target_new=target,
            subject=topic, target_aliases=(target,), rephrases=rephrases, locality=locality,
            topic=topic, label=label, responses=own, opposite_responses=opposite,
            extra={"source_format": "convsent", "source_index": index},
        ))
    return records
