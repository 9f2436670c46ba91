"""The data layer: dataset formats, task splits, task mixing, statistics and the ConvSent
sentiment scorer. It knows nothing of models or editors; see ``docs/data.md``."""
from __future__ import annotations

from instructedit.data.formats import FORMATS, convert_rows, detect_format, infer_task, load_records
from instructedit.data.io import read_rows, write_records
from instructedit.data.leakage import LeakReport, check_task_leaks, remove_leaks
from instructedit.data.mixing import (
    DEFAULT_CONVSENT_SHARE,
    SEEN_INSTRUCTION_INDICES,
    MixedExample,
    iter_mixed,
    mix_tasks,
)
from instructedit.data.records import (
    KNOWN_TASKS,
    SENTIMENT_LABELS,
    EditRecord,
    LocalityProbe,
    PortabilityProbe,
    RecordError,
    validate_record,
)
from instructedit.data.tasks import (
    DEFAULT_DATA_DIR,
    HELD_OUT_TASKS,
    SPLITS,
    TASKS,
    TRAINING_TASKS,
    SplitError,
    TaskSplits,
    load_split,
    load_task,
)

__all__ = [
    "DEFAULT_CONVSENT_SHARE", "DEFAULT_DATA_DIR", "FORMATS", "HELD_OUT_TASKS", "KNOWN_TASKS",
    "SEEN_INSTRUCTION_INDICES", "SENTIMENT_LABELS", "SPLITS", "TASKS", "TRAINING_TASKS",
    "EditRecord", "LeakReport", "LocalityProbe", "MixedExample", "PortabilityProbe",
    "RecordError", "SplitError", "TaskSplits", "check_task_leaks", "convert_rows",
    "detect_format", "infer_task", "iter_mixed", "load_records", "load_split", "load_task",
    "mix_tasks", "read_rows", "remove_leaks", "validate_record", "write_records",
]
