"""What the results report (``docs/results.md``) is made of: its grid of methods and tasks, one
evaluation of it (:class:`RunSpec`), that evaluation's outcome (:class:`Outcome`, re-summarised
over fewer records by :func:`subset`) and everything the report shows (:class:`ResultsData`).
The runs come from :mod:`.run_store`, the sections from :mod:`.sections`."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..data.tasks import TASKS
from .config import ResultsConfig
from .inputs import SEEN, InstructionChoice, describe_instruction
from .metrics import RecordResult, summarize

EVAL_TASKS: tuple[str, ...] = TASKS  # counterfact, recent, convsent, zsre (held out)

FRESH_INSTRUCTIONS: dict[str, str] = {
    "counterfact": "Imagine this fact is different now and finish the sentence with the new, untrue answer.",
    "recent": "The subject has a brand-new property; reply with its current value.",
    "convsent": "From today on, talk about [TOPIC] in a [LABEL] tone and leave every other subject as it was.",
    "zsre": "Read the question about the subject and name the one entity it is asking for.",
}
"""Instructions written for this report only: never seen in training and not among the ten."""

METHODS: tuple[str, ...] = ("Unedited", "Gradient step", "MEND multi-task", "InstructEdit", "ROME")
USER_TASKS: tuple[str, ...] = ("counterfact", "recent", "zsre")
"""Tasks of the plain protocol (short answers a continuation can contain; ConvSent has none)."""


@dataclass(frozen=True)
class RunSpec:
    """One evaluation of the report."""

    method: str
    task: str
    editor: str                      # 'none', 'gradient' or a checkpoint folder
    quant: str = "none"
    instruction: InstructionChoice = SEEN
    split: str = "test"
    limit: int = 100
    step_size: float | None = None
    sentiment: bool = True
    patch_rank: int | None | str = "default"   # 'default': the editor's DEFAULT_PATCH_RANK
    plain: bool = False                        # also measure the plain protocol (slower)

    def label(self) -> str:
        return (f"{self.method} / {self.task} / {self.quant} / "
                f"{describe_instruction(self.instruction)} / {self.split}")


@dataclass
class Outcome:
    """The result of one :class:`RunSpec`: its summary, or why it could not run."""

    spec: RunSpec
    summary: dict | None = None
    editor_name: str = ""
    reason: str = ""
    records: list = field(default_factory=list)    # per-record results (RecordResult dicts)
    cached: bool = False                             # read from --cache-dir, not run now

    @property
    def ok(self) -> bool:
        return self.summary is not None

    def get(self, key: str):
        return None if self.summary is None else self.summary.get(key)


@dataclass
class ResultsData:
    """Everything the report shows."""

    config: ResultsConfig
    environment: dict
    started: str
    finished: str = ""
    seconds: float = 0.0
    editors: dict = field(default_factory=dict)          # method -> checkpoint card
    sweep: list = field(default_factory=list)            # (step, rel, loc, score)
    step_size: float | None = None
    step_chosen_by: str = ""
    table3: dict = field(default_factory=dict)           # method -> task -> Outcome
    table3_rome: dict = field(default_factory=dict)      # the same on ROME's fewer records, ROME too
    instructions: dict = field(default_factory=dict)     # mode -> task -> Outcome
    quantization: dict = field(default_factory=dict)     # quant -> task -> Outcome
    patch_ranks: dict = field(default_factory=dict)      # rank (None: full) -> task -> Outcome
    default_patch_rank: int | None = None
    analyses: list = field(default_factory=list)         # AnalysisResult dicts
    analysis_note: str = ""
    scaling: dict = field(default_factory=dict)          # label -> Outcome
    user: dict = field(default_factory=dict)             # method -> task -> Outcome (plain protocol)
    trace: dict = field(default_factory=dict)            # causal tracing averaged over records
    scaling_note: str = ""
    runs: list = field(default_factory=list)             # Outcome, in run order


def subset(outcome: Outcome, ids: set[str]) -> Outcome | None:
    """``outcome`` re-summarised over the records in ``ids`` (None if some are missing).

    Seconds are scaled by the share of records kept.
    """
    rows = [RecordResult(**r) for r in outcome.records if r["id"] in ids]
    if not outcome.ok or len(rows) != len(ids):
        return None
    seconds = (outcome.summary.get("seconds") or 0.0) * len(rows) / max(1, len(outcome.records))
    summary = summarize(rows, seconds).to_dict()
    summary.update({k: outcome.summary[k] for k in ("model_id", "use_instructions") if k in outcome.summary})
    return Outcome(outcome.spec, summary, outcome.editor_name, records=[r.to_dict() for r in rows])
