"""The load figures of many stress runs as one page: ``python -m tests.load_table RUN.json ... --out docs/load.md``.

Each argument is the ``--json`` output of one ``python -m tests.stress`` run; the page has one row
per run (users, mode, verdict, throughput, latencies, batching, memory), sorted by users and mode,
the command that made each row, and the machine; ``--profile`` adds where one edit request's time
goes (``python -m tests.request_profile --json``). ``make load`` runs the profile and the stress
tool for 8, 16 and 32 users, one request at a time and batched, then this.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

HEADER = ("| users | mode | result | edits / min | generations / min | edit latency p50 · p95 | "
          "generate latency p50 · p95 | batched calls | RSS after close (vs warm-up) | whole run |")


def _phase(run: dict) -> dict:
    phase = run["phase"]
    return phase if isinstance(phase, dict) else ast.literal_eval(phase)


def mode_of(run: dict) -> str:
    limits = run.get("limits", {})
    if limits.get("batch_window_ms") is None:
        return "one at a time"
    return (f"batched ({limits['batch_window_ms']:g} ms window, widths within "
            f"{limits.get('batch_max_extra_pad', 0)})")


def row(run: dict) -> str:
    """One run's table row."""
    phase = _phase(run)
    users = run["config"]["users"]
    generations = phase["generate_ms"]["n"] / (phase["seconds"] / 60) if phase["seconds"] else 0.0
    result = ("PASS (0 errors, 0 isolation mismatches)" if run["ok"] else
              f"FAIL ({len(run['errors'])} errors, {len(run['mismatches'])} isolation mismatches)")
    batching = run.get("batching") or {}
    batched = ("–" if not batching else
               f"{batching.get('batched_requests', 0)} of {batching.get('requests', 0)} calls in "
               f"{batching.get('batches', 0)} batches")
    rss = (run["rss_after_mib"] / run["rss_warm_mib"] - 1) * 100 if run.get("rss_warm_mib") else 0.0
    return (f"| {users} | {mode_of(run)} | {result} | {phase['edits_per_minute']:.1f} | {generations:.1f} | "
            f"{phase['edit_ms']['p50'] / 1000:.1f} s · {phase['edit_ms']['p95'] / 1000:.1f} s | "
            f"{phase['generate_ms']['p50'] / 1000:.1f} s · {phase['generate_ms']['p95'] / 1000:.1f} s | "
            f"{batched} | {rss:+.1f} % | {run['seconds']:.0f} s |")


def command_of(run: dict) -> str:
    limits, config = run.get("limits", {}), run["config"]
    batched = f" --batched {limits['batch_window_ms']:g}" if limits.get("batch_window_ms") is not None else ""
    return (f"python -m tests.stress --users {config['users']} --rounds {config['rounds']} "
            f"--request-timeout {config['request_timeout_s']:g} --deadline {config['deadline_s']:g}{batched}")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def profile_section(result: dict) -> list[str]:
    """The request profile (``python -m tests.request_profile --json``) as a table of medians."""
    summary, rows = result["summary"], result["rows"]
    parts = summary["seconds"]
    rest = statistics.median(max(0.0, r["total_s"] - sum(r["seconds"].values())) for r in rows)
    lines = [
        "## One edit request, by part",
        "",
        f"`python -m tests.request_profile --records {summary['requests']} --threads {result.get('threads', '?')}`: "
        "the studio's edit request (InstructEdit with its first look, the baseline, both blast radii; "
        "the app's models and limits) made by one user, CounterFact test records, medians over "
        f"{summary['requests']} requests after a warm-up one; {summary['generate_calls']:g} generation "
        f"calls of {summary['generate_rows']:g} rows in all.",
        "",
        "| part (median of the requests) | seconds |",
        "|---|---|",
        f"| whole request | {summary['total_s']:.2f} |",
        f"| first look handed over at | {summary['first_look_s']:.2f} |",
        *(f"| {name.replace('_', '-')} | {seconds:.2f} |" for name, seconds in sorted(parts.items())),
        f"| the rest (planning, verdicts, hand-over) | {rest:.2f} |",
        "",
        "Per request: " + "; ".join(f"{r['prompt']!r} {r['total_s']:.2f} s" for r in rows) + ".",
        "",
    ]
    return lines


def page(runs: Sequence[dict], profile: dict | None = None) -> str:
    """The markdown page of ``runs`` (and of a request profile)."""
    runs = sorted(runs, key=lambda r: (r["config"]["users"], r.get("limits", {}).get("batch_window_ms") is not None))
    first = runs[0] if runs else {}
    lines = [
        "# Load figures",
        "",
        f"Generated by `python -m tests.load_table` (`make load`) on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from {len(runs)} stress runs "
        f"(git commit {_commit()}, {os.cpu_count()} CPUs, {platform.machine()}); each row is one run of "
        "the command below it, the runs one after another with nothing else running. "
        f"Model {first.get('model', '?')}, editor {first.get('editor', '?')}, baseline "
        f"{first.get('baseline', '?')}; every user edits, generates, undoes and generates again, all "
        "users at once (tests/stress.py). Isolation: every user's report and texts equal its "
        "single-user run, bit for bit; a fresh session sees the unedited model.",
        "",
        HEADER,
        "|---|---|---|---|---|---|---|---|---|---|",
        *(row(r) for r in runs),
        "",
        "Commands, in row order:",
        "",
        "```",
        *(command_of(r) for r in runs),
        "```",
        "",
    ]
    if profile is not None:
        lines += profile_section(profile)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load_table", description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="stress runs' --json files")
    parser.add_argument("--profile", default=None, help="a request profile's --json file to add")
    parser.add_argument("--out", default=None, help="write the page here (default: print it)")
    args = parser.parse_args(argv)
    loaded = []
    for name in [*args.runs, *([args.profile] if args.profile else [])]:
        try:
            loaded.append(json.loads(Path(name).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"error: cannot read {name}: {exc}", file=sys.stderr)
            return 2
    runs, profile = (loaded[:-1], loaded[-1]) if args.profile else (loaded, None)
    text = page(runs, profile)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
