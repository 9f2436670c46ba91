"""The editors shown next to InstructEdit for comparison ("slots"); no Gradio here.

- ``baseline``: the multi-task MEND editor trained without instructions (``--baseline-editor``);
- ``rome``: ROME (:mod:`instructedit.editing.rome`), rank-one locate-and-edit of one MLP at the subject's
  last token, which needs the edit's subject (the form's Subject box: ``EditRequest.subject``).

``python app.py --compare baseline|rome|both|none`` picks the slots shown. Each slot keeps its
own stack of edits per session (a ROME edit is made on top of the session's earlier ROME edits),
and its failure (e.g. ROME without a subject in the prompt) is said in its own column while
InstructEdit's result still shows.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..editing.editor import EditRequest
from ..editing.keying import find_subject

INSTRUCTEDIT = "instructedit"
"""Not a slot: names InstructEdit's report in an outcome's ``pending`` while it is a first look."""
BASELINE = "baseline"
ROME = "rome"
SLOTS = (BASELINE, ROME)
"""The comparison slots in page order (also their field names in the report and history)."""


@dataclass(frozen=True)
class Slot:
    """How one comparison editor is named and shown.

    ``key``: the prefix of its components in the page (``bl``, ``rome``); ``label``: its short
    name; ``title``: its column's heading; ``reads``: what its input is; ``failed``: the start of
    the sentence shown when it cannot make an edit; ``computing``: its progress message.
    """

    key: str
    label: str
    title: str
    reads: str
    failed: str
    computing: str


SLOT_INFO = {
    BASELINE: Slot("bl", "Baseline", "Baseline: multi-task MEND (no instruction)",
                   "The same prompt, no instruction.", "the baseline editor failed: ",
                   "computing the same edit without instruction"),
    ROME: Slot("rome", "ROME", "ROME: locate-and-edit at the subject (no instruction)",
               "The prompt as typed, no instruction; ROME rewrites one MLP at the subject's last "
               "token.", "ROME could not make this edit: ",
               "computing the same edit at the subject (a few seconds)"),
}


def rome_subject_problem(request: EditRequest) -> str | None:
    """Why ROME cannot edit ``request`` (no subject, or one not in the prompt), else None."""
    subject = (request.subject or request.topic or "").strip()
    prompt = request.prompt.strip()
    if not subject:
        return ("ROME needs the subject of the edit: type it in the Subject box (the words of the "
                "prompt the fact is about, e.g. Eiffel Tower).")
    if find_subject(prompt, subject) < 0:
        return (f"ROME needs the subject to appear in the prompt as typed: {subject!r} does not "
                f"occur in {prompt!r}.")
    return None
