"""The edit report as one JSON object with named fields (the page's "Full report" and the
``/edit_report`` endpoint); no Gradio here.

Layout::

    {"edit_id", "total_ms", "request": {task, instruction, prompt, target, subject, ...},
     "instructedit": EDITOR, "baseline": EDITOR or null, "baseline_error": text or null,
     "rome": EDITOR or null, "rome_error": text or null}

(``baseline`` / ``rome``: null when that comparison is not shown, or failed: then its ``_error``
says why in one sentence, e.g. ROME without a subject in the prompt. While the page shows
InstructEdit's result before the comparisons are done, ``"pending"`` lists what is still computing:
``"instructedit"`` while InstructEdit's part is a first look at the prompt as typed (it then has
``"partial": true`` and no rephrases, probes or blast radius yet), then the comparison slots.)

    EDITOR = {"editor", "target", "scores": {plain_reliability, generation_success,
              plain_generalization, reliability, generalization, locality},
              "plain": PROBE (the prompt as typed), "rephrases": [PROBE], "locality": [PROBE],
              "blast_radius": {"subject", "kind", "neighbour_source", "summary",
                               "counts": {"neighbour"|"fact"|"unrelated": {changed, total,
                                          now_say_target}}, "probes": [PROBE]},
              "paper_protocol": {"model_input", "wrapped": PROBE, "rephrases": [PROBE],
                                 "reliability", "generalization", "locality"},
              "edit_ms", "measure_ms"}

    PROBE = {prompt, group, before, after, verdict, answer, answer_known, p_answer_before,
             p_answer_after, p_target_before, p_target_after, target_accuracy, agreement,
             target_accuracy_before}
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..measuring.single import EditReport
from .blast import GROUPS, BlastRadius
from .history import request_to_dict
from .views import blast_summary


def blast_payload(blast: BlastRadius | None) -> dict[str, Any] | None:
    if blast is None:
        return None
    return {"subject": blast.subject, "kind": blast.kind, "neighbour_source": blast.source,
            "summary": blast_summary(blast),
            "counts": {group: asdict(blast.count(group)) for group in GROUPS},
            "probes": [asdict(p) for p in blast.probes]}


def editor_payload(report: EditReport | None) -> dict[str, Any] | None:
    """One editor's part of the report (``None`` when it was not shown or failed)."""
    if report is None:
        return None
    s = report.scores
    return {
        "editor": report.editor, "target": report.target, "scores": s.to_dict(),
        "plain": asdict(report.prompt),
        "rephrases": [asdict(r) for r in report.rephrases],
        "locality": [asdict(p) for p in report.probes],
        "blast_radius": blast_payload(report.blast),
        "paper_protocol": {"model_input": report.model_input, "wrapped": asdict(report.wrapped),
                           "rephrases": [asdict(r) for r in report.wrapped_rephrases],
                           "reliability": s.reliability, "generalization": s.generalization,
                           "locality": s.locality},
        "edit_ms": round(report.edit_ms, 1), "measure_ms": round(report.measure_ms, 1),
        **({"partial": True} if report.partial else {}),
    }


def edit_payload(outcome) -> dict[str, Any]:
    """The whole report of an :class:`~instructedit.web.service.EditOutcome`."""
    return {"edit_id": outcome.entry.id, "total_ms": round(outcome.total_ms, 1),
            "request": request_to_dict(outcome.entry.request),
            "instructedit": editor_payload(outcome.report),
            "baseline": editor_payload(outcome.baseline_report),
            "baseline_error": outcome.baseline_error,
            "rome": editor_payload(outcome.rome_report),
            "rome_error": outcome.rome_error,
            **({"pending": list(outcome.pending)} if outcome.pending else {})}
