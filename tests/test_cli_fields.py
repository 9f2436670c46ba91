"""Flags built from the config dataclasses (instructedit/cli/fields.py): the helper itself, the flags
of ``train``, ``results``, ``bench`` and ``python app.py`` as they were before (names, values,
choices, what they set) and every config field reachable by its flag."""
from __future__ import annotations

import argparse
import json
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import pytest

import app as app_module
from instructedit import cli
from instructedit.bench.config import BenchConfig
from instructedit.cli import bench as bench_cli
from instructedit.cli import evaluate as evaluate_cli
from instructedit.cli import train as train_cli
from instructedit.cli.common import CliError
from instructedit.cli.fields import Option, add_fields, build_config, field_help, given_values, plain_text
from instructedit.evaluate.config import ResultsConfig
from instructedit.train.config import TrainConfig
from instructedit.web.config import AppConfig, Limits

# ----- the flags of each command before they were built from the configs ------------------------
BEFORE = {
    "train": {"--batch-size", "--c-edit", "--c-loc", "--config", "--data", "--fresh", "--model", "--name",
              "--no-cache", "--no-instructions", "--out", "--pool-per-task", "--quant", "--rank", "--run-dir",
              "--seed", "--steps", "--tasks", "--threads", "--val-every", "--val-per-task"},
    "results": {"--baseline", "--batch-size", "--cache-dir", "--data", "--device", "--figures", "--instructedit",
                "--limit", "--model", "--no-progress", "--no-rome", "--out", "--pca-limit", "--quant-limit",
                "--quants", "--rome-tasks", "--sections", "--seed", "--split", "--step-size", "--sweep-limit",
                "--threads", "--trace-limit", "--user-limit", "--user-quant", "-v", "--verbose"},
    "bench": {"--data", "--editor", "--json", "--model", "--out", "--patch-rank", "--quant", "--quick",
              "--step-size", "--threads", "-v", "--verbose"},
    "app": {"--baseline-editor", "--batch-max-rows", "--batch-window-ms", "--compare", "--concurrency-limit",
            "--data", "--device", "--editor", "--host", "--idle-timeout", "--max-edits-per-session",
            "--max-input-chars", "--max-new-tokens", "--model", "--patch-rank", "--port", "--quant",
            "--queue-size", "--share", "--threads", "-v", "--verbose"},
}
VALUELESS = {"train": {"--fresh", "--no-cache", "--no-instructions"},
             "results": {"--no-progress", "--no-rome", "-v", "--verbose"},
             "bench": {"--json", "--quick", "-v", "--verbose"},
             "app": {"--share", "-v", "--verbose"}}
CHOICES = {"train": {"--quant": ("none", "8bit", "4bit"), "--dtype": ("float32", "bfloat16")},
           "results": {"--split": ("val", "test"), "--user-quant": ("none", "8bit", "4bit")},
           "bench": {"--quant": ("none", "8bit", "4bit", "all"), "--edit-rekey": ("on", "off")},
           "app": {"--compare": ("baseline", "rome", "both", "none"), "--quant": ("none", "8bit", "4bit"),
                   "--edit-rekey": ("on", "off")}}
REQUIRED = {"train": {"--out"}, "results": set(), "bench": set(), "app": set()}
ADDED = {  # config fields that had no flag and now have one
    "train": {"--convsent-share", "--edit-from", "--editor-lr", "--grad-clip", "--init-lr", "--key-on",
              "--kl-all-positions", "--last-n-layers", "--layers", "--log-every", "--matrices",
              "--max-answer-tokens", "--n-blocks", "--neighbour-locality", "--patience", "--plain-loss",
              "--plain-rephrase-share", "--precondition", "--step-size-lr", "--continuation-kl-tokens",
              "--init-from", "--continuation-kl-neighbours", "--no-group-rows-by-length", "--max-minutes", "--dtype"},
    "results": {"--patch-ranks", "--rome-limit", "--lanes"},
    "bench": {"--active-counts", "--compression-edits", "--eval-batch-size", "--eval-records",
              "--finetune-edits", "--first-answer-edits", "--first-answer-tokens", "--generation-prompt", "--generation-repeats", "--latency-edits",
              "--latency-warmup", "--new-tokens", "--profile-top", "--rome-edits", "--seed", "--svd-ranks",
              "--train-batches", "--train-pool-per-task", "--train-repeats", "--edit-steps", "--edit-strength",
              "--edit-rekey", "--edit-until"},
    "app": {"--figures-dir", "--max-import-bytes", "--max-lines", "--max-sessions", "--max-total-edits",
            "--probe-answer-tokens", "--results-file", "--no-fast-4bit", "--edit-steps", "--edit-strength",
            "--batch-max-extra-pad", "--edit-rekey", "--edit-until"},
}
ADDED_VALUELESS = {"--no-group-rows-by-length", "--kl-all-positions", "--neighbour-locality", "--plain-loss", "--no-fast-4bit",
                   "--continuation-kl-neighbours"}


def parser_of(command: str) -> argparse.ArgumentParser:
    if command == "app":
        return app_module.build_parser()
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings
            if not isinstance(action, argparse._HelpAction)}


@pytest.mark.parametrize("command", sorted(BEFORE))
def test_the_flags_are_those_of_before_plus_the_new_fields(command):
    options = options_of(parser_of(command))
    assert set(options) == BEFORE[command] | ADDED[command]
    assert not BEFORE[command] & ADDED[command]
    for flag, action in options.items():
        assert (action.nargs == 0) == (flag in VALUELESS[command] | ADDED_VALUELESS), flag
        assert action.nargs in (0, None), flag  # one value at most, as before
        assert action.required == (flag in REQUIRED[command]), flag
        expected = CHOICES[command].get(flag)
        assert (tuple(action.choices) if action.choices is not None else None) == expected, flag
        assert action.help and "==SUPPRESS==" not in action.help % {"default": ""}, flag


# ----- what the flags of before set, unchanged ----------------------------------------------------
def parse(command: str, *argv: str) -> argparse.Namespace:
    return parser_of(command).parse_args(list(argv))


def test_train_flags_set_the_config_as_before(tmp_path):
    args = parse("train", "--model", "m", "--quant", "8bit", "--data", "d", "--tasks", "counterfact, recent",
                 "--no-instructions", "--steps", "5", "--batch-size", "2", "--val-every", "3", "--val-per-task", "4",
                 "--pool-per-task", "6", "--rank", "7", "--c-loc", "0.5", "--c-edit", "2", "--seed", "1",
                 "--threads", "2", "--no-cache", "--name", "n", "--out", "o", "--run-dir", "r", "--fresh")
    assert train_cli.config_from_args(args) == TrainConfig(
        model="m", quant="8bit", data="d", tasks=("counterfact", "recent"), use_instructions=False, steps=5,
        batch_size=2, val_every=3, val_per_task=4, pool_per_task=6, rank=7, c_loc=0.5, c_edit=2.0, seed=1,
        threads=2, cached=False, name="n")
    assert (args.out, args.run_dir, args.fresh, args.config) == ("o", "r", True, None)
    assert train_cli.config_from_args(parse("train", "--out", "o")) == TrainConfig()
    assert train_cli.config_from_args(parse("train", "--out", "o", "--tasks", "")) == TrainConfig()
    # a --config file, overridden by the flags given only
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"steps": 9, "plain_loss": True, "tasks": ["recent"], "threads": 3}))
    config = train_cli.config_from_args(parse("train", "--out", "o", "--config", str(path), "--steps", "5"))
    assert (config.steps, config.plain_loss, config.tasks, config.threads) == (5, True, ("recent",), 3)
    assert config.cached and config.use_instructions and config.batch_size == TrainConfig().batch_size


def test_results_flags_set_the_config_as_before(tmp_path):
    data = str(tmp_path)
    args = parse("results", "--data", data, "--out", "o.md", "--figures", "f", "--model", "m", "--instructedit", "i",
                 "--baseline", "b", "--step-size", "0.5", "--limit", "3", "--quant-limit", "4", "--pca-limit", "5",
                 "--sweep-limit", "6", "--split", "val", "--quants", "none,4bit", "--device", "cpu", "--seed", "7",
                 "--batch-size", "2", "--threads", "1", "--user-quant", "none", "--user-limit", "8",
                 "--sections", "user, trace", "--no-rome", "--rome-tasks", "counterfact", "--trace-limit", "9",
                 "--cache-dir", "c", "--no-progress", "--rome-limit", "2")
    assert evaluate_cli.results_config_from_args(args) == ResultsConfig(
        data=data, out="o.md", figures="f", model="m", instructedit="i", baseline="b", step_size=0.5, limit=3,
        quant_limit=4, pca_limit=5, sweep_limit=6, split="val", quants=("none", "4bit"), device="cpu", seed=7,
        batch_size=2, threads=1, user_quant="none", user_limit=8, sections=("user", "trace"), rome=False,
        rome_tasks=("counterfact",), trace_limit=9, cache_dir="c", progress=False, rome_limit=2)
    assert evaluate_cli.results_config_from_args(parse("results", "--data", data)) == ResultsConfig(data=data)
    for argv, message in ((("--sections", "user,bogus"), "unknown --sections"), (("--sections", ""), "unknown --sections"),
                          (("--quants", "none,2bit"), "unknown --quants"), (("--pca-limit", "1"), "--pca-limit is too small"),
                          (("--limit", "0"), "--limit is too small"), (("--rome-limit", "0"), "--rome-limit is too small")):
        with pytest.raises(CliError, match=message):
            evaluate_cli.results_config_from_args(parse("results", "--data", data, *argv))
    with pytest.raises(CliError, match="is not a data folder"):
        evaluate_cli.results_config_from_args(parse("results", "--data", str(tmp_path / "missing")))


def test_bench_flags_set_the_config_as_before():
    args = parse("bench", "--model", "m", "--quant", "4bit", "--editor", "e", "--step-size", "0.5", "--data", "d",
                 "--threads", "2", "--json", "--out", "o.md")
    assert bench_cli.config_from_args(args) == BenchConfig(model="m", quants=("4bit",), editor="e", step_size=0.5,
                                                           data="d", threads=2)
    from instructedit.cli.common import default_editor_path

    shipped = BenchConfig(editor=default_editor_path())
    assert bench_cli.config_from_args(parse("bench")) == shipped
    assert bench_cli.config_from_args(parse("bench", "--quick")) == shipped.quick_version()
    # a flag given wins over --quick's settings
    quick = bench_cli.config_from_args(parse("bench", "--quick", "--latency-edits", "9"))
    assert quick.latency_edits == 9 and quick.quick and quick.new_tokens == BenchConfig().quick_version().new_tokens
    for argv in (("--threads", "0"), ("--step-size", "0")):
        with pytest.raises(CliError):
            bench_cli.config_from_args(parse("bench", *argv))


def test_app_flags_set_the_config_as_before(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert app_module.config_from_args(parse("app")) == AppConfig()
    args = parse("app", "--model", "m", "--quant", "8bit", "--device", "cpu", "--editor", "e", "--baseline-editor",
                 "b", "--compare", "both", "--patch-rank", "full", "--data", "d", "--host", "0.0.0.0", "--port",
                 "1234", "--share", "--max-new-tokens", "5", "--max-edits-per-session", "6", "--queue-size", "7",
                 "--concurrency-limit", "3", "--max-input-chars", "100", "--idle-timeout", "9.5",
                 "--batch-window-ms", "20", "--batch-max-rows", "4", "--threads", "2", "-vv")
    limits = Limits(max_new_tokens=5, max_edits_per_session=6, queue_size=7, concurrency_limit=3, max_input_chars=100,
                    idle_timeout_s=9.5, batch_window_ms=20.0, batch_max_rows=4)
    assert app_module.config_from_args(args) == AppConfig(
        model="m", quant="8bit", device="cpu", editor="e", baseline_editor="b", compare="both", patch_rank=None,
        data_dir=Path("d"), host="0.0.0.0", port=1234, share=True, limits=limits, threads=2)
    assert args.verbose == 2 and args.host == "0.0.0.0" and args.share is True
    assert app_module.config_from_args(parse("app", "--data", "None")).data_dir is None


# ----- every field reachable by its flag -----------------------------------------------------------
NO_FLAG = {  # fields a command line cannot read (nested settings, free-form entries)
    ("train", TrainConfig): {"extra"},
    ("results", ResultsConfig): set(),
    ("bench", BenchConfig): {"finetune", "goals", "quants"},  # quants: bench --quant MODE|all (above)
    ("app", AppConfig): {"limits"},
    ("app", Limits): set(),
}
SAMPLES = {  # (text, expected) where the type's sample does not fit
    "patch_ranks": ("2,full", (2, None)),
    "data_dir": ("somewhere", Path("somewhere")),
}


def sample(item, annotation, action: argparse.Action):
    """A flag's text different from the field's default, and the value it should set."""
    default = item.default if item.default is not MISSING else item.default_factory()
    if item.name in SAMPLES:
        return SAMPLES[item.name]
    if action.nargs == 0:
        return None, not default
    if action.choices:
        choice = next(c for c in action.choices if c != default)
        return choice, choice
    base = annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        base = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(base) is tuple:
        item_type = typing.get_args(base)[0]
        values = default[:1] if default else ((1, 2) if item_type is int else ("a", "b"))
        return ",".join(map(str, values)), tuple(values)
    if base is int:
        value = (default or 0) + 3
        return str(value), value
    if base is float:
        value = (default or 0) + 0.25
        return str(value), value
    return "x", base("x")


def build(command: str, args: argparse.Namespace):
    if command == "train":
        return train_cli.config_from_args(args)
    if command == "results":
        return evaluate_cli.results_config_from_args(args)
    if command == "bench":
        return bench_cli.config_from_args(args)
    return app_module.config_from_args(args)


@pytest.mark.parametrize("command,cls", list(NO_FLAG), ids=lambda x: getattr(x, "__name__", x))
def test_every_config_field_is_reachable_by_its_flag(command, cls, tmp_path):
    parser = parser_of(command)
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    hints = typing.get_type_hints(cls)
    required = {"train": ["--out", "o"], "results": ["--data", str(tmp_path)]}.get(command, [])
    for item in fields(cls):
        if item.name in NO_FLAG[(command, cls)]:
            assert item.name not in by_dest
            continue
        assert item.name in by_dest, f"{cls.__name__}.{item.name} has no flag"
        action = by_dest[item.name]
        text, expected = sample(item, hints[item.name], action)
        base = required
        if command == "results" and item.name == "data":  # a folder that is there
            text, expected, base = str(tmp_path / "data"), str(tmp_path / "data"), []
            (tmp_path / "data").mkdir(exist_ok=True)
        if command == "results" and item.name == "lanes":  # several lanes share a cache folder
            base = [*base, "--cache-dir", str(tmp_path / "cache")]
        argv = [*base, action.option_strings[-1], *([] if text is None else [text])]
        config = build(command, parser.parse_args(argv))
        if cls is Limits:
            config = config.limits
        assert getattr(config, item.name) == expected, (item.name, argv)


# ----- the helper -------------------------------------------------------------------------------
@dataclass
class Demo:
    """A demo.

    Attributes:
        val_every: validate every N steps.
        lr, rate: shared text, continued
            on a deeper line.
        names: the ``val_every``-free names (see :class:`~a.b.Thing`).
        fast: be fast.
        cached: keep a cache.
        where: a path.
        pct: a 50% share.

    More prose after the section.
    """

    val_every: int = 200
    lr: float = 1e-3
    rate: float | None = None
    names: tuple[str, ...] = ("a", "b")
    fast: bool = False
    cached: bool = True
    where: Path | None = None
    pct: float = 0.5
    blob: dict = field(default_factory=dict, metadata={"help": "not readable"})


def test_field_help_parses_the_attributes_section():
    docs = field_help(Demo)
    assert docs["val_every"] == "validate every N steps."
    assert docs["lr"] == docs["rate"] == "shared text, continued on a deeper line."
    assert plain_text(docs["names"]) == "the val_every-free names (see Thing)"
    assert plain_text("use ``val_every``.", {"val_every": "--val-every"}) == "use --val-every"
    assert "More prose" not in " ".join(docs.values())


def test_add_fields_derives_flags_types_defaults_and_help():
    parser = argparse.ArgumentParser()
    added = add_fields(parser, Demo, exclude=("blob",), options={"pct": Option(flag="--share-pct", metavar="P")})
    assert added == ["val_every", "lr", "rate", "names", "fast", "cached", "where", "pct"]
    options = options_of(parser)
    assert set(options) == {"--val-every", "--lr", "--rate", "--names", "--fast", "--no-cached", "--where",
                            "--share-pct"}
    assert options["--val-every"].help == "validate every N steps (default: 200)"
    assert options["--lr"].help == "shared text, continued on a deeper line (default: 0.001)"
    assert options["--rate"].help == "shared text, continued on a deeper line"  # None: no default shown
    assert options["--names"].help.endswith("(comma-separated; default: a,b)")
    assert options["--share-pct"].help % {} == "a 50% share (default: 0.5)"
    assert options["--val-every"].metavar == "VAL_EVERY" and options["--share-pct"].metavar == "P"
    args = parser.parse_args([])
    assert build_config(Demo, args) == Demo()
    args = parser.parse_args(["--val-every", "5", "--rate", "0.5", "--names", "x, y,", "--fast", "--no-cached",
                              "--where", "p", "--share-pct", "0.25"])
    assert build_config(Demo, args, lr=2.0) == Demo(val_every=5, lr=2.0, rate=0.5, names=("x", "y"), fast=True,
                                                    cached=False, where=Path("p"), pct=0.25)
    with pytest.raises(SystemExit):
        parser.parse_args(["--val-every", "many"])


def test_given_only_keeps_just_the_flags_given():
    parser = argparse.ArgumentParser()
    add_fields(parser, Demo, include=("val_every", "cached", "names"), given_only=True)
    assert given_values(Demo, parser.parse_args([])) == {}
    assert given_values(Demo, parser.parse_args(["--no-cached", "--names", "z"])) == {"cached": False,
                                                                                    "names": ("z",)}
    assert "(default: 200)" in options_of(parser)["--val-every"].help


def test_add_fields_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="cannot read"):
        add_fields(argparse.ArgumentParser(), Demo, include=("blob",))
    with pytest.raises(ValueError, match="no fields"):
        add_fields(argparse.ArgumentParser(), Demo, include=("nope",))
    with pytest.raises(ValueError, match="no fields"):
        add_fields(argparse.ArgumentParser(), Demo, include=("lr",), options={"lr_typo": Option()})

    @dataclass
    class Undocumented:
        """No attributes section."""

        size: int = 1

    with pytest.raises(ValueError, match="no help text"):
        add_fields(argparse.ArgumentParser(), Undocumented)


def test_bench_without_editor_uses_the_shipped_one():
    from instructedit.cli.common import default_editor_path

    config = bench_cli.config_from_args(parse("bench", "--quant", "4bit"))
    assert config.editor == default_editor_path() and config.editor  # never None: make bench runs
