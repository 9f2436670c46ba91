"""One process of tests/test_distributed.py's multi-process run (started by ``accelerate launch``).

Runs ``python -m instructedit train`` (the command line, argv after ``--``) with the trainer
instrumented, then saves what this process saw to ``<record>/rank<r>.pt``: its rank and world size,
each step's examples and loss, its gradients before and after averaging, which file-writing
methods it called, and its final network (parameters and buffers).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from instructedit.cli import main
from instructedit.train.trainer import Trainer

RECORD: dict = {"examples": [], "losses": [], "local_grads": [], "mean_grads": [], "writes": []}
WRITERS = ("_log", "save_state", "save_best", "save_best_card")


def _grads(network) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1).clone() for p in network.parameters()
                      if p.grad is not None])


def _instrument(trainer: Trainer) -> None:
    context = trainer.distributed
    average = context.average_gradients
    batch_at = trainer.batch_at
    run_step = trainer.run_step

    def average_gradients(network):
        RECORD["local_grads"].append(_grads(network))
        average(network)
        RECORD["mean_grads"].append(_grads(network))

    def batch(step, stream):
        examples = batch_at(step, stream)
        RECORD["examples"].append([(e.record_id, e.edit_prompt, e.outer_prompt, e.locality_prompt)
                                   for e in examples])
        return examples

    def step(examples):
        result = run_step(examples)
        if torch.is_grad_enabled():  # a training step (validation runs without gradients)
            RECORD["losses"].append(float(result.loss.detach()))
        return result

    context.average_gradients = average_gradients
    trainer.batch_at = batch
    trainer.run_step = step
    for name in WRITERS:
        method = getattr(trainer, name)

        def wrapped(*args, _name=name, _method=method, **kwargs):
            RECORD["writes"].append(_name)
            return _method(*args, **kwargs)

        setattr(trainer, name, wrapped)
    RECORD.update(rank=context.rank, world_size=context.world_size, device=context.device(),
                  backend=context.state.backend)
    RECORD["trainer"] = trainer


def run(record_dir: Path, argv: list[str]) -> int:
    init = Trainer.__init__

    def instrumented_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _instrument(self)

    Trainer.__init__ = instrumented_init
    code = main(argv)
    trainer = RECORD.pop("trainer")
    RECORD["state"] = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    RECORD["code"] = code
    torch.save(RECORD, record_dir / f"rank{RECORD['rank']}.pt")
    return code


if __name__ == "__main__":
    torch.set_num_threads(1)
    split = sys.argv.index("--")
    raise SystemExit(run(Path(sys.argv[1]), sys.argv[split + 1:]))
