"""Where one edit request's server time goes: ``python -m tests.request_profile``.

Loads the studio's models as ``python app.py`` does (the embedded SmolLM2-135M in 4 bit through
the packed kernel, the shipped InstructEdit and baseline editors, the data's same-template
neighbours for the blast radius), then makes ``--records`` CounterFact test edits through
:meth:`~instructedit.web.service.EditService.edit`, one user, a fresh session each, with the first
look handed over early as the page asks for it. Each request is timed whole and by part:

- ``generate``: greedy generation (calls and rows);
- ``teacher_forced``: the teacher-forced scoring passes;
- ``edit:<editor>``: each editor's :meth:`~instructedit.editing.editor.Editor.edit`;
- ``first_look_s``: when InstructEdit's first look was handed over.

The parts are read by wrapping those functions for the run (a profiler, not a stand-in: they run
as they are). ``--tiny`` uses the test suite's tiny random model (seconds; what the tests run).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


@contextlib.contextmanager
def timed_parts() -> Iterator[dict]:
    """Time generation, teacher-forced scoring and editing while the ``with`` body runs; yields
    ``{"seconds": {part: s}, "calls": {part: n}, "rows": {"generate": n}}`` (reset per request
    with :func:`reset`)."""
    import instructedit.measuring.probing as probing
    from instructedit.editing.editor import Editor

    parts = {"seconds": collections.defaultdict(float), "calls": collections.Counter(),
             "rows": collections.Counter()}
    real_generate, real_logits, real_edit = probing.generate, probing.full_model_answer_logits, Editor.edit

    def generate(backbone, texts, config=None):
        start = time.perf_counter()
        try:
            return real_generate(backbone, texts, config)
        finally:
            parts["seconds"]["generate"] += time.perf_counter() - start
            parts["calls"]["generate"] += 1
            parts["rows"]["generate"] += len(texts)

    def logits(model, batch):
        start = time.perf_counter()
        try:
            return real_logits(model, batch)
        finally:
            parts["seconds"]["teacher_forced"] += time.perf_counter() - start
            parts["calls"]["teacher_forced"] += 1

    def edit(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return real_edit(self, *args, **kwargs)
        finally:
            parts["seconds"][f"edit:{self.name}"] += time.perf_counter() - start

    probing.generate, probing.full_model_answer_logits, Editor.edit = generate, logits, edit
    try:
        yield parts
    finally:
        probing.generate, probing.full_model_answer_logits, Editor.edit = real_generate, real_logits, real_edit


def reset(parts: dict) -> None:
    for value in parts.values():
        value.clear()


def requests(data: str | None, count: int, offset: int):
    """``count`` CounterFact test edits (one rephrase and one locality probe each), or fixed ones
    without data."""
    from instructedit.data.tasks import load_split
    from instructedit.editing.editor import EditRequest

    if data is None:
        prompts = [("The Eiffel Tower is located in", "Rome", "Eiffel Tower"),
                   ("The mother tongue of Danielle Darrieux is", "English", "Danielle Darrieux")]
        return [EditRequest(p, t, task="counterfact", subject=s, rephrases=(f"In short, {p[0].lower()}{p[1:]}",),
                            probes=("The capital of France is",)) for p, t, s in prompts * count][:count]
    records = load_split(data, "counterfact", "test")[offset:offset + count]
    return [EditRequest(r.prompt, r.target_new, task="counterfact", subject=r.subject,
                        rephrases=tuple(r.rephrases[:1]), probes=tuple(p.prompt for p in r.locality[:1]))
            for r in records]


def profile(service, edits: Sequence) -> list[dict]:
    """Each request's total, first look and parts (see the module doc)."""
    rows = []
    with timed_parts() as parts:
        for n, request in enumerate(edits):
            reset(parts)
            start = time.perf_counter()
            first: list[float] = []
            service.edit(f"profile-{n}", request,
                         on_update=lambda outcome, first=first, start=start:
                         first or first.append(time.perf_counter() - start))
            total = time.perf_counter() - start
            rows.append({"prompt": request.prompt, "total_s": round(total, 3),
                         "first_look_s": round(first[0], 3) if first else None,
                         "seconds": {k: round(v, 3) for k, v in parts["seconds"].items()},
                         "calls": dict(parts["calls"]), "rows": dict(parts["rows"])})
            service.close(f"profile-{n}")
    return rows


def summary(rows: list[dict]) -> dict:
    """Medians over the requests."""
    keys = sorted({k for r in rows for k in r["seconds"]})
    return {"requests": len(rows), "total_s": statistics.median(r["total_s"] for r in rows),
            "first_look_s": statistics.median(r["first_look_s"] for r in rows if r["first_look_s"] is not None),
            "seconds": {k: statistics.median(r["seconds"].get(k, 0.0) for r in rows) for k in keys},
            "generate_calls": statistics.median(r["calls"].get("generate", 0) for r in rows),
            "generate_rows": statistics.median(r["rows"].get("generate", 0) for r in rows)}


def build_service(args, work_dir: str):
    """The service of ``python app.py`` (or of the tiny model with ``--tiny``)."""
    from dataclasses import replace

    from instructedit.web.blast import BlastPlanner, load_neighbour_indexes
    from instructedit.web.config import AppConfig
    from instructedit.web.service import EditService

    if args.tiny:
        from instructedit.web.config import Limits
        from tests.stress import _tiny_service

        return _tiny_service(Limits(), work_dir)[0]
    from instructedit.web.loading import load_models

    config = replace(AppConfig(), threads=args.threads) if args.threads else AppConfig()
    models = load_models(config)
    blast = BlastPlanner(indexes=load_neighbour_indexes(args.data))
    return EditService(models.backbone, models.editor, models.baseline, config.limits, blast=blast,
                       rome=models.rome, export_dir=Path(work_dir) / "exports")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.request_profile", description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=4, help="edit requests timed (default 4)")
    parser.add_argument("--offset", type=int, default=5, help="first CounterFact test record (default 5)")
    parser.add_argument("--data", default="data", help="data folder (default data; missing: fixed edits)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed requests first (default 1)")
    parser.add_argument("--tiny", action="store_true", help="the test suite's tiny random model")
    parser.add_argument("--json", default=None, help="also write the rows and the summary here")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data if args.data and Path(args.data).is_dir() and not args.tiny else None
    with tempfile.TemporaryDirectory(prefix="instructedit-profile-") as work_dir:
        service = build_service(args, work_dir)
        edits = requests(data, args.warmup + args.records, args.offset)
        profile(service, edits[: args.warmup])
        rows = profile(service, edits[args.warmup:])
    result = {"rows": rows, "summary": summary(rows), "threads": torch.get_num_threads()}
    for row in rows:
        print(json.dumps(row))
    print(json.dumps(result["summary"]))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
