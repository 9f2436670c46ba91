"""Typed configuration of a meta-training run."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..defaults import DEFAULT_MODEL

TRAIN_DTYPES = ("float32", "bfloat16")
"""Backbone dtypes a run may train on (``TrainConfig.dtype``)."""

# Settings that may change between a run and its resumption (budget and cadence, not the editor).
BUDGET_FIELDS = frozenset({"steps", "patience", "threads", "log_every", "val_every",
                           "group_rows_by_length", "max_minutes"})


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored with the checkpoint).

    Each field is also a flag of ``python -m instructedit train`` (``val_every``: ``--val-every``),
    with its entry below as the help text.

    Attributes:
        model: the frozen backbone: alias, folder or hub id.
        quant: train on a quantized backbone (bitsandbytes).
        dtype: float dtype of the frozen backbone's weights and activations: ``float32``, or
            ``bfloat16`` (faster matmuls where the CPU multiplies bf16 natively, e.g. AMX: a
            1.1-1.3x faster step measured there; slower where bf16 is emulated); None: the
            loader's default (float32 unquantized). The editor network, its step sizes and the
            losses stay float32 either way.
        data: data folder laid out like ../shared/datasets (counterfact/, recent/, convsent/).
        tasks: training tasks (never zsre).
        use_instructions: False trains the multi-task MEND baseline on the same data.
        steps: maximum optimisation steps.
        batch_size: edits per step (each example in a batch is its own edit).
        editor_lr: Adam learning rate of the editor network.
        step_size_lr: Adam learning rate of the log step sizes.
        c_edit: outer-loss weight of the edit NLL (on the edit input and a rephrase).
        c_loc: outer-loss weight of the locality KL.
        grad_clip: the editor's gradients are clipped to this norm.
        rank: editor rank (width of the low-rank residual blocks of the gradient transforms).
        n_blocks: residual blocks per gradient transform.
        init_lr: initial step size of every edited module.
        last_n_layers: edited blocks when ``layers`` is not given: the last N.
        pool_per_task: records sampled per task (seeded) into the training pool; each record
            gets one seen instruction (seeded), so cached states are reused across epochs.
        convsent_share: largest share of the training stream ConvSent may take (its long
            responses would dominate).
        val_every: validate every N steps.
        log_every: training metrics are averaged and logged every N steps.
        val_per_task: validation records per task (val splits, never train).
        patience: validations without improvement before early stopping.
        max_answer_tokens: answers are cut to this many tokens (ConvSent responses are long).
        seed: random seed.
        threads: torch CPU threads (None: torch's default).
        cached: False runs the full model every step (slower; the cached step is exact).
        name: editor name recorded in the checkpoint.
        layers: edited blocks (None: the last ``last_n_layers``).
        matrices: edited MLP matrices (None: all of the family's MLP matrices).
        key_on: ``all`` tokens or the ``subject``'s tokens build the update (see keying.py).
        plain_loss: the outer loss also scores the plain (unwrapped) prompt or rephrase.
        plain_rephrase_share: how often that plain input is a rephrase rather than the prompt.
        neighbour_locality: a same-template neighbour (another subject in the edit's sentence,
            from the training pool) is held still besides the dataset's locality probe.
        kl_all_positions: the locality KL covers every position of the locality texts.
        precondition: ``covariance`` whitens the update's keys with the inverse key covariance
            (ROME's ``C^-1 k``; down-projections only, see preconditioning.py), or ``none``.
        edit_from: ``wrapped+plain`` computes each edit from the instruction-wrapped input and
            the prompt as typed (instruction runs only; see ``EditorConfig.edit_from``), or
            ``wrapped``.
        continuation_kl_tokens: when above 0, the locality KL also covers this many tokens of
            the unedited model's own continuation after "typed prompt + target" (against edits
            that loop on their target; see continuations.py).
        continuation_kl_neighbours: the continuation KL also covers the unedited model's own
            continuation after each same-template neighbour's "prompt + true answer" (against
            edits that break the neighbours' sentences; needs ``neighbour_locality``).
        max_minutes: stop once training has taken this many minutes (steps, validations and the
            continuations generated up front; the last step is validated); None: no limit.
        group_rows_by_length: each forward of a step runs its rows grouped by length (little
            padding); False runs one forward per kind of text (edit input, rephrase, locality
            text, ...). The numbers are the same either way; only the time differs.
        init_from: start the editor network from this checkpoint's weights (same edited modules,
            editor settings and use of instructions; e.g. to train a run further on another
            machine); the optimiser starts afresh.
        extra: free-form notes stored with the run (a ``--config`` file only).
    """

    model: str = DEFAULT_MODEL
    quant: str = "none"
    dtype: str | None = None
    data: str = "data"
    tasks: tuple[str, ...] = ("counterfact", "recent", "convsent")
    use_instructions: bool = True
    steps: int = 2000
    batch_size: int = 4
    editor_lr: float = 1e-3
    step_size_lr: float = 5e-3
    c_edit: float = 1.0
    c_loc: float = 3.0
    grad_clip: float = 10.0
    rank: int = 256
    n_blocks: int = 2
    init_lr: float = 3e-5
    last_n_layers: int = 3
    pool_per_task: int = 400
    convsent_share: float = 1 / 3
    val_every: int = 200
    log_every: int = 20
    val_per_task: int = 32
    patience: int = 4
    max_answer_tokens: int = 24
    seed: int = 0
    threads: int | None = None
    cached: bool = True
    name: str = "instructedit"
    layers: tuple[int, ...] | None = None
    matrices: tuple[str, ...] | None = None
    key_on: str = "all"
    plain_loss: bool = False
    plain_rephrase_share: float = 0.5
    neighbour_locality: bool = False
    kl_all_positions: bool = False
    precondition: str = "none"
    edit_from: str = "wrapped"
    continuation_kl_tokens: int = 0
    continuation_kl_neighbours: bool = False
    group_rows_by_length: bool = True
    max_minutes: float | None = None
    init_from: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["tasks"] = list(self.tasks)
        for key in ("layers", "matrices"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Read a JSON config; keys must be fields of this class."""
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path}: unknown config keys {sorted(unknown)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        for key in ("tasks", "layers", "matrices"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


RECIPES_FOLDER = Path(__file__).resolve().parents[2] / "docs" / "recipes"
"""The repository's recipe files (absent where the package is installed without the repository)."""


def matching_recipe(train_config: dict, folder: Path = RECIPES_FOLDER) -> Path | None:
    """The recipe file in ``folder`` that trains what ``train_config`` trained (equal settings but
    for the budget, the data folder, the name and free-form notes), or None."""
    ignored = BUDGET_FIELDS | {"data", "name", "extra"}

    def settings(data: dict) -> dict:
        return {k: v for k, v in {**TrainConfig().to_dict(), **data}.items() if k not in ignored}

    wanted = settings(train_config)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            if settings(TrainConfig.from_file(path).to_dict()) == wanted:
                return path
        except (ValueError, TypeError, json.JSONDecodeError):
            continue
    return None
