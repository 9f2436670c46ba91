"""Choosing a trained editor's edit schedule on a validation split, by the plain protocol.

Each candidate :class:`~instructedit.editing.schedule.EditSchedule` (passes, strength) is
evaluated on the same records of each task (the evaluation code of ``eval``), next to the
unedited model on them (its neighbourhood score is the ceiling). A candidate's score per task is
the harmonic mean of

- efficacy: the mean of plain reliability, plain generalization (where the task has rephrases)
  and generation success, and
- specificity: the mean of the neighbourhood score as a share of the unedited model's (at most
  1), one minus the neighbour bleed, one minus the unrelated bleed and the fluency ratio (the
  continuations' generation entropy after / before, at most 1);

a candidate whose continuations degenerate (fluency ratio below ``min_fluency``, or a share of
degenerate edits above ``max_degenerate``, on a task) is not eligible. The chosen schedule has the
best mean score over the tasks. A saved calibration can be judged again under other limits
(:func:`rescore`).
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..editing.editor import Editor
from ..editing.schedule import EditSchedule
from .runner import Evaluator

log = logging.getLogger(__name__)

__all__ = ["CalibrationConfig", "CandidateScore", "Calibration", "schedule_score", "calibrate",
           "rescore", "parse_schedule"]


@dataclass(frozen=True)
class CalibrationConfig:
    """What a calibration tries and how it judges (see the module docstring)."""

    schedules: tuple[EditSchedule, ...] = (EditSchedule(1, 1.0), EditSchedule(2, 0.75),
                                           EditSchedule(3, 0.5), EditSchedule(4, 0.4))
    min_fluency: float = 0.85
    max_degenerate: float | None = None

    def __post_init__(self) -> None:
        if not self.schedules:
            raise ValueError("a calibration needs at least one schedule to try")
        if len(set(self.schedules)) != len(self.schedules):
            raise ValueError("the schedules to try repeat one another")
        if not 0 <= self.min_fluency <= 1:
            raise ValueError(f"min_fluency must be between 0 and 1, got {self.min_fluency}")
        if self.max_degenerate is not None and not 0 <= self.max_degenerate <= 1:
            raise ValueError(f"max_degenerate must be between 0 and 1 (or none), got {self.max_degenerate}")


SCHEDULE_PATTERN = re.compile(r"(\d+)(?:x(\d*\.?\d+))?(r)?(?:u(\d*\.?\d+))?")


def parse_schedule(text: str) -> EditSchedule:
    """``"2x1.5"``: 2 passes at strength 1.5 (``"2"``: 2 passes at strength 1); a trailing ``r``
    (``"4x0.4r"``): each pass re-keyed; then ``uP`` (``"6x0.4u0.9"``): passes after the first only
    until the edit holds at probability P (:class:`EditSchedule`)."""
    match = SCHEDULE_PATTERN.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"a schedule is written STEPSxSTRENGTH[r][uP], e.g. 2x1.5, 4x0.4r or 6x0.4u0.9; "
                         f"got {text!r}")
    steps, strength, rekey, until = match.groups()
    return EditSchedule(steps=int(steps), strength=float(strength) if strength else 1.0, rekey=bool(rekey),
                        until=None if until is None else float(until))


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def schedule_score(summary: Mapping, ns_ceiling: float | None, min_fluency: float,
                   max_degenerate: float | None = None) -> float | None:
    """The score of one task's summary (``eval``'s JSON fields); ``None``: not eligible (fluency
    ratio below ``min_fluency``, or a share of degenerate edits above ``max_degenerate``) or not
    measurable (no plain protocol)."""
    efficacy = _mean([summary.get("plain_reliability"), summary.get("plain_generalization"),
                      summary.get("generation_success")])
    ns = summary.get("neighbourhood_score")
    ns_share = None if ns is None else (min(1.0, ns / ns_ceiling) if ns_ceiling else ns)
    fluency = summary.get("fluency_ratio")
    specificity = _mean([ns_share,
                         None if summary.get("neighbour_bleed") is None else 1 - summary["neighbour_bleed"],
                         None if summary.get("unrelated_bleed") is None else 1 - summary["unrelated_bleed"],
                         None if fluency is None else min(1.0, fluency)])
    if efficacy is None or specificity is None:
        return None
    if fluency is not None and fluency < min_fluency:
        return None
    degenerate = summary.get("degenerate")
    if max_degenerate is not None and degenerate is not None and degenerate > max_degenerate:
        return None
    if efficacy + specificity == 0:
        return 0.0
    return 2 * efficacy * specificity / (efficacy + specificity)


@dataclass
class CandidateScore:
    """One schedule's summaries and scores per task."""

    schedule: EditSchedule
    summaries: dict[str, dict] = field(default_factory=dict)
    scores: dict[str, float | None] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """Mean over tasks; ``None`` when not eligible on some task."""
        if not self.scores or any(s is None for s in self.scores.values()):
            return None
        return sum(self.scores.values()) / len(self.scores)


@dataclass
class Calibration:
    """Every candidate, the unedited summaries, and the chosen schedule."""

    candidates: list[CandidateScore]
    unedited: dict[str, dict]
    chosen: EditSchedule | None

    def to_dict(self) -> dict:
        return {"chosen": None if self.chosen is None else self.chosen.to_dict(),
                "unedited": self.unedited,
                "candidates": [{"schedule": c.schedule.to_dict(), "score": c.score, "scores": c.scores,
                                "summaries": c.summaries} for c in self.candidates]}


def calibrate(editor: Editor, records: Mapping[str, Sequence], pools: Mapping[str, Sequence],
              config: CalibrationConfig, eval_config) -> Calibration:
    """Evaluate every schedule of ``config`` on ``records`` (per task; ``pools``: the whole split,
    for same-template neighbours) with ``eval_config`` (an ``EvalConfig``, plain protocol on) and
    choose the best (``None`` if none is eligible)."""
    if not eval_config.plain:
        raise ValueError("a calibration needs the plain protocol (EvalConfig.plain)")
    unedited = {task: Evaluator(editor.backbone, None, eval_config, neighbour_pool=pools[task])
                .run(recs).summary.to_dict() for task, recs in records.items()}
    candidates = []
    for schedule in config.schedules:
        trial = editor.with_schedule(schedule)
        candidate = CandidateScore(schedule)
        for task, recs in records.items():
            summary = Evaluator(editor.backbone, trial, eval_config, neighbour_pool=pools[task]).run(recs).summary.to_dict()
            candidate.summaries[task] = summary
            candidate.scores[task] = schedule_score(summary, unedited[task].get("neighbourhood_score"),
                                                    config.min_fluency, config.max_degenerate)
        log.info("schedule %s: score %s", schedule.to_dict(), candidate.score)
        candidates.append(candidate)
    return Calibration(candidates, unedited, _best(candidates))


def _best(candidates: Sequence[CandidateScore]) -> EditSchedule | None:
    eligible = [c for c in candidates if c.score is not None]
    return max(eligible, key=lambda c: c.score).schedule if eligible else None


def rescore(saved: Mapping, min_fluency: float, max_degenerate: float | None) -> Calibration:
    """Choose again from a saved calibration (``Calibration.to_dict()``: its candidates' summaries
    and the unedited ones) under other limits, without evaluating anything.

    Raises:
        ValueError: ``saved`` lacks the candidates or the unedited summaries of their tasks.
    """
    try:
        unedited = dict(saved["unedited"])
        rows = list(saved["candidates"])
        candidates = []
        for row in rows:
            candidate = CandidateScore(EditSchedule.from_dict(row["schedule"]), dict(row["summaries"]))
            for task, summary in candidate.summaries.items():
                candidate.scores[task] = schedule_score(summary, unedited[task].get("neighbourhood_score"),
                                                        min_fluency, max_degenerate)
            candidates.append(candidate)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a saved calibration (calibrate --out): {exc!r}") from exc
    if not candidates:
        raise ValueError("the saved calibration has no candidates")
    return Calibration(candidates, unedited, _best(candidates))
