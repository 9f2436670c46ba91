"""The training plumbing through accelerate: one process trains exactly as the hand-written plumbing
did, and two real processes (gloo, CPU) average their gradients, hold the same network, split each
step's examples and leave the writing to the main process."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from instructedit.model.backbone import load_backbone
from instructedit.train.config import TrainConfig
from instructedit.train.distributed import DistributedContext
from instructedit.train.trainer import Trainer
from tests.data.layout import make_data_dir

ROOT = Path(__file__).resolve().parents[1]

# Captured with the hand-written torch.distributed plumbing (before accelerate), this config, seed 0:
# the training loss of each of the first 10 steps, the sum of the trained network's parameters and
# the two validation scores. The accelerate plumbing reproduced them bit for bit.
BEFORE_ACCELERATE = {
    "llama": ([3.2675974369049072, 3.938115119934082, 4.095322608947754, 4.449328422546387,
               3.7861242294311523, 3.802643060684204, 3.684720516204834, 4.475030899047852,
               4.364899158477783, 4.198264122009277], 2263.08130341005,
              [0.5425785603313071, 0.5270726660652708]),
    "gpt2": ([3.214928150177002, 3.2406280040740967, 3.6902456283569336, 4.00252103805542,
              3.465021848678589, 3.261362075805664, 3.33600115776062, 3.755988597869873,
              3.7477855682373047, 3.592944383621216], 2537.8491203296653,
             [0.37918506077814285, 0.17660216677292243]),
}


def _config(data_dir, model, **kw) -> TrainConfig:
    base = dict(data=str(data_dir), model=str(model), steps=10, batch_size=2, rank=8, val_every=5,
                val_per_task=3, pool_per_task=8, editor_lr=3e-3, step_size_lr=3e-2, init_lr=1e-3,
                patience=100, tasks=("counterfact", "recent", "convsent"), last_n_layers=2,
                max_answer_tokens=8, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_data_dir(tmp_path_factory.mktemp("data"))


def test_a_single_process_is_rank_0_of_1_and_skips_every_collective():
    context = DistributedContext.create()
    assert (context.rank, context.world_size, context.is_main) == (0, 1, True)
    if not torch.cuda.is_available():
        assert context.device() == "cpu"
    assert context.own_slice([3, 1, 2]) == [3, 1, 2]
    assert context.from_main({"a": 1}) == {"a": 1} and context.mean({"x": 0.5}) == {"x": 0.5}
    network = torch.nn.Linear(2, 2)
    network(torch.ones(1, 2)).sum().backward()
    grad = network.weight.grad.clone()
    context.average_gradients(network)
    context.sync_from_main(network)
    context.wait()
    assert torch.equal(network.weight.grad, grad)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_single_process_training_is_unchanged_by_accelerate(family, tiny_llama_dir, tiny_gpt2_dir,
                                                            data_dir, tmp_path):
    folder = tiny_llama_dir if family == "llama" else tiny_gpt2_dir
    trainer = Trainer(_config(data_dir, folder), tmp_path / "ckpt", tmp_path / "run",
                      load_backbone(str(folder)))
    losses = []
    run_step = trainer.run_step

    def recording(examples):
        result = run_step(examples)
        if torch.is_grad_enabled():
            losses.append(float(result.loss.detach()))
        return result

    trainer.run_step = recording
    trainer.train(resume=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected_losses, expected_sum, expected_scores = BEFORE_ACCELERATE[family]
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert float(sum(p.double().sum() for p in trainer.network.parameters())) == pytest.approx(
        expected_sum, rel=1e-6)
    assert [r["score"] for r in rows if r["kind"] == "val"] == pytest.approx(expected_scores, abs=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_one_network_and_only_the_main_process_writes(tiny_llama_dir, data_dir,
                                                                          tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` with no GPU visible: two gloo processes
    on the CPU run ``python -m instructedit train`` (``accelerate launch --cpu`` would start one
    process: accelerate runs several CPU processes only through mpirun)."""
    steps, batch = 4, 2
    config = _config(data_dir, tiny_llama_dir, steps=steps, batch_size=batch, val_every=2)
    config_file = tmp_path / "train.json"
    config_file.write_text(json.dumps(config.to_dict()))
    record, out, run = tmp_path / "record", tmp_path / "ckpt", tmp_path / "run"
    record.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), str(ROOT / "tests" / "distributed_worker.py"),
               str(record), "--", "train", "--config", str(config_file), "--out", str(out),
               "--run-dir", str(run), "--fresh"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    main, other = (torch.load(record / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert [(p["rank"], p["world_size"], p["backend"], p["device"]) for p in (main, other)] == [
        (0, 2, "gloo", "cpu"), (1, 2, "gloo", "cpu")]
    assert main["code"] == other["code"] == 0

    # one network: the same parameters and running statistics on both processes
    assert main["state"].keys() == other["state"].keys()
    for name, value in main["state"].items():
        assert torch.equal(value, other["state"][name]), name

    # each step, both processes step with the mean of their two (different) gradients
    assert len(main["local_grads"]) == len(other["local_grads"]) == steps
    for step in range(steps):
        local0, local1 = main["local_grads"][step], other["local_grads"][step]
        assert not torch.allclose(local0, local1)
        mean = (local0 + local1) / 2
        for averaged in (main["mean_grads"][step], other["mean_grads"][step]):
            assert torch.allclose(averaged, mean, rtol=1e-6, atol=1e-7 * float(mean.abs().max()))

    # the processes split each step's examples: together they are what one process of twice the
    # batch draws (the same records, rephrases and locality probes)
    single = Trainer(_config(data_dir, tiny_llama_dir, steps=steps, batch_size=2 * batch),
                     tmp_path / "single", tmp_path / "single-run", load_backbone(str(tiny_llama_dir)))
    stream = single._stream()
    for step in range(steps):
        union = [(e.record_id, e.edit_prompt, e.outer_prompt, e.locality_prompt)
                 for e in single.batch_at(step, stream)]
        assert main["examples"][step] + other["examples"][step] == union
        assert len(main["examples"][step]) == len(other["examples"][step]) == batch

    # only the main process writes: metrics once per step and validation, the state, the checkpoint
    assert other["writes"] == []
    assert {"_log", "save_state", "save_best", "save_best_card"} <= set(main["writes"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, steps + 1))
    assert [r["step"] for r in rows if r["kind"] == "val"] == [2, 4]
    for row, loss0, loss1 in zip(train_rows, main["losses"], other["losses"], strict=True):
        assert row["loss"] == pytest.approx((loss0 + loss1) / 2, abs=1e-4)  # logged: mean of both
    saved = json.loads((out / "editor.json").read_text())
    assert saved["provenance"]["total_steps_run"] == steps
    assert (run / "state.pt").is_file()
    assert sorted(p.name for p in record.iterdir()) == ["rank0.pt", "rank1.pt"]
