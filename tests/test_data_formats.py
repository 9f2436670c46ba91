"""Loaders of every dataset format: detection, conversion, task inference and error messages."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from instructedit.data.formats import (
    FORMATS,
    clean_nq_question,
    detect_format,
    infer_task,
    load_records,
)
from instructedit.data.io import read_rows, write_records
from instructedit.data.records import EditRecord, LocalityProbe, PortabilityProbe, RecordError

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"

FIXTURES = {
    "easyedit_cf.json": ("easyedit-cf", "counterfact", 3),
    "knowedit.json": ("knowedit", "custom", 3),
    "rome_cf.json": ("rome-cf", "counterfact", 3),
    "mend_zsre.json": ("mend-zsre", "zsre", 3),
    "convsent.json": ("convsent", "convsent", 8),
    "canonical.jsonl": ("canonical", None, 3),
    "plain.csv": ("plain", "custom", 3),
    "plain.json": ("plain", "custom", 2),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_detects_format_and_task(name):
    fmt, task, count = FIXTURES[name]
    path = DATA / name
    assert detect_format(read_rows(path), path) == fmt
    records = load_records(path)
    assert len(records) == count
    if task is not None:
        assert {r.task for r in records} == {task}
    assert len({r.id for r in records}) == len(records)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_explicit_format_gives_the_same_records(name):
    fmt = FIXTURES[name][0]
    assert load_records(DATA / name, format=fmt) == load_records(DATA / name)


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_canonical_round_trip(name, tmp_path):
    records = load_records(DATA / name)
    for suffix in (".json", ".jsonl"):
        out = write_records(tmp_path / f"out{suffix}", records)
        again = load_records(out)
        assert again == records
        assert [r.extra for r in again] == [r.extra for r in records]


def test_easyedit_cf_record():
    first = load_records(DATA / "easyedit_cf.json")[0]
    assert first == EditRecord(
        id="easyedit_cf/101", task="counterfact", prompt="The Louvre is located in the city of",
        target_new="Rome", subject="The Louvre", ground_truth="Paris", target_aliases=("Rome",),
        ground_truth_aliases=("Paris",),
        rephrases=("The famous museum called the Louvre stands in",),
        locality=(LocalityProbe("The Uffizi Gallery is located in the city of", "Florence"),),
    )
    assert first.extra["case_id"] == 101


def test_knowedit_answers_and_probes():
    kili, opera, hopper = load_records(DATA / "knowedit.json", task="counterfact")
    assert kili.task == "counterfact"
    assert kili.rephrases == ("Which country is home to Mount Kilimanjaro?",)
    assert kili.portability == (
        PortabilityProbe("The capital of the country that has Mount Kilimanjaro is", "Nairobi",
                         "Reasoning"),
        PortabilityProbe("Kibo volcano is located in the country of", "Kenya", "Subject_Aliasing"),
    )
    assert kili.locality == (LocalityProbe("The height of Mount Kilimanjaro is about", "5,895 metres"),)
    # alias lists keep every alias; the first one is the answer
    assert opera.target_new == "Zaha Hadid"
    assert opera.target_aliases == ("Zaha Hadid", "Dame Zaha Hadid")
    assert opera.ground_truth == "Snøhetta" and opera.rephrases == ()
    assert opera.locality == (LocalityProbe("The Oslo Opera House is in the city of", "Oslo"),)
    assert opera.extra["locality_aliases"] == [["Oslo", "Christiania", "Bjørvika"]]
    assert hopper.ground_truth_aliases == ("United States Navy", "US Navy")
    # the {kind: {prompt: [...], ground_truth: [...]}} shape
    assert hopper.locality == (LocalityProbe("Grace Hopper was born in", "New York City"),
                               LocalityProbe("Grace Hopper studied at", "Yale University"))
    assert hopper.extra["locality_kinds"] == ["Forgetfulness", "Forgetfulness"]
    assert hopper.portability == (PortabilityProbe("Grace Hopper served in the navy of",
                                                   "United Kingdom", "Logical_Generalization"),)


def test_rome_cf_record():
    eco, pele, walkman = load_records(DATA / "rome_cf.json")
    assert eco.prompt == "The mother tongue of Umberto Eco is"
    assert (eco.subject, eco.target_new, eco.ground_truth) == ("Umberto Eco", "Dutch", "Italian")
    assert eco.rephrases == ("He wrote many novels. Umberto Eco speaks", "Umberto Eco grew up speaking")
    assert eco.locality == (LocalityProbe("The native language of Italo Calvino is", "Italian"),
                            LocalityProbe("Dante Alighieri spoke", "Italian"))
    assert eco.extra["attribute_prompts"] == ["The mother tongue of Vincent van Gogh is"]
    assert eco.id == "rome_cf/7"
    assert pele.prompt == "Pelé plays in the position of"
    assert walkman.locality == () and walkman.rephrases == ()


def test_mend_zsre_record():
    knox, hubble, tintin = load_records(DATA / "mend_zsre.json")
    assert knox == EditRecord(
        id="mend_zsre/0", task="zsre", prompt="In which state is Fort Knox located?",
        target_new="Ohio", subject="Fort Knox", ground_truth="Kentucky", target_aliases=("Ohio",),
        ground_truth_aliases=("Kentucky",), rephrases=("Fort Knox is in which US state?",),
        locality=(LocalityProbe("Who wrote the song hotel california?", "Don Felder"),),
    )
    assert knox.extra["cond"].startswith("Kentucky >> Ohio")
    assert hubble.ground_truth_aliases == ("NASA", "National Aeronautics and Space Administration")
    assert hubble.portability == (PortabilityProbe(
        "Which agency's budget pays for Hubble's operation?", "ESA", "portability"),)
    assert tintin.locality[0].prompt == "How many players are on a rugby union team?"
    assert clean_nq_question("nq question: who is it") == "Who is it?"


def test_convsent_records():
    records = load_records(DATA / "convsent.json", seed=3)
    jazz_pos, jazz_neg = records[0], records[1]
    assert (jazz_pos.label, jazz_neg.label) == ("positive", "negative")
    assert jazz_pos.topic == jazz_pos.subject == "jazz music"
    assert jazz_pos.prompt == jazz_neg.prompt and "jazz music" in jazz_pos.prompt
    assert len(jazz_pos.rephrases) == 4 and jazz_pos.prompt not in jazz_pos.rephrases
    # whitespace stripped, blank responses dropped
    assert jazz_pos.responses == ("I love jazz, it is so relaxing.", "Jazz is wonderful, especially live!")
    assert jazz_pos.target_new in jazz_pos.responses
    assert jazz_pos.opposite_responses == jazz_neg.responses
    assert jazz_neg.target_new in jazz_neg.responses
    for record in records:
        assert len(record.locality) == 2
        assert all(record.topic not in p.prompt for p in record.locality)
    # seeded: same seed, same records; labels can be chosen
    assert load_records(DATA / "convsent.json", seed=3) == records
    only_neg = load_records(DATA / "convsent.json", labels=("negative",))
    assert [r.label for r in only_neg] == ["negative"] * 4


def test_canonical_keeps_task_unless_overridden():
    records = load_records(DATA / "canonical.jsonl")
    assert [r.task for r in records] == ["counterfact", "convsent", "zsre"]
    assert records[0].extra == {"note": "hand-written"}
    assert records[2].portability[0].kind == "Reasoning"
    assert {r.task for r in load_records(DATA / "canonical.jsonl", task="custom")} == {"custom"}


def test_plain_csv_and_json():
    csv_records = load_records(DATA / "plain.csv")
    assert csv_records[0] == EditRecord(
        id="plain/0", task="custom", prompt="The capital of Australia is", target_new="Sydney",
        target_aliases=("Sydney",), rephrases=("Australia's capital city is",),
        locality=(LocalityProbe("The capital of New Zealand is", "Wellington"),))
    assert csv_records[1].rephrases == () and csv_records[1].locality == ()
    assert csv_records[2].prompt == "Water boils at sea level at, in Celsius,"
    saturn, gold = load_records(DATA / "plain.json")
    assert saturn.rephrases == ("The biggest planet orbiting the Sun is", "Which planet is the largest?")
    assert gold.subject == "gold"


def test_task_inference():
    assert infer_task("data/counterfact/counterfact-train.json") == "counterfact"
    assert infer_task("data/counterfact/knowedit-train_cf.json") == "counterfact"
    assert infer_task("data/recent/recent_train.json") == "recent"
    assert infer_task("data/zsre/ZsRE-test-all.json") == "zsre"
    assert infer_task("data/convsent/blender_test.json") == "convsent"
    assert infer_task("somewhere/edits.json", "knowedit") is None
    assert infer_task("somewhere/edits.json", "mend-zsre") == "zsre"
    assert set(FORMATS) == {"easyedit-cf", "knowedit", "rome-cf", "mend-zsre", "convsent",
                            "canonical", "plain"}


@pytest.mark.parametrize("name, fmt, expected", [
    ("easyedit_cf_empty_target.json", None,
     "easyedit_cf_empty_target.json: record 2: field 'target_new' must be a non-empty string"),
    ("knowedit_missing_answer.json", None,
     "knowedit_missing_answer.json: record 1: field 'locality.Relation_Specificity[0].ground_truth' is missing"),
    ("rome_cf_no_placeholder.json", None,
     "rome_cf_no_placeholder.json: record 0: field 'requested_rewrite.prompt' must contain '{}'"),
    ("canonical_bad_task.jsonl", None, "canonical_bad_task.jsonl: record 1: field 'task' must be one of"),
    ("plain_missing_target.csv", None, "plain_missing_target.csv: record 1: field 'target' must be a non-empty string"),
    ("convsent_no_neg.json", None, "convsent_no_neg.json: record 1: field 'neg' has no non-empty response"),
    ("invalid.json", None, "invalid.json: invalid JSON at line 3"),
    ("canonical_bad_line.jsonl", None, "canonical_bad_line.jsonl: line 3: invalid JSON"),
    ("not_a_list.json", None, "not_a_list.json: expected a JSON list of records"),
    ("unknown_format.json", None, "unknown_format.json: cannot detect the format"),
    ("easyedit_cf_empty_target.json", "mend-zsre", "easyedit_cf_empty_target.json: record 0: field 'src'"),
])
def test_malformed_input_names_file_record_and_field(name, fmt, expected):
    with pytest.raises(RecordError) as info:
        load_records(BAD / name, format=fmt)
    assert str(info.value).startswith(expected), str(info.value)


def test_skip_invalid_logs_a_count(caplog):
    with caplog.at_level(logging.WARNING, logger="instructedit.data"):
        records = load_records(BAD / "easyedit_cf_empty_target.json", skip_invalid=True)
    assert [r.id for r in records] == ["easyedit_cf_empty_target/1", "easyedit_cf_empty_target/2"]
    assert "skipped 1 invalid record(s) of 3" in caplog.text
    assert "record 2: field 'target_new'" in caplog.text


def test_drop_empty_probes_keeps_the_record(tmp_path, caplog):
    path = tmp_path / "edits.json"
    path.write_text('[{"subject": "A", "prompt": "A is in", "target_new": "B", '
                    '"locality": {"Relation_Specificity": [{"prompt": "A has", "ground_truth": [[]]},'
                    ' {"prompt": "A owns", "ground_truth": [["C"]]}]}}]')
    with pytest.raises(RecordError, match="record 0: field 'locality.Relation_Specificity"):
        load_records(path)
    with caplog.at_level(logging.INFO, logger="instructedit.data"):
        (record,) = load_records(path, drop_empty_probes=True)
    assert record.locality == (LocalityProbe("A owns", "C"),)
    assert "dropped 1 probe(s)" in caplog.text


def test_duplicate_ids_are_rejected(tmp_path):
    path = tmp_path / "dups.jsonl"
    path.write_text('{"id": "x", "task": "custom", "prompt": "p", "target_new": "t"}\n'
                    '{"id": "x", "task": "custom", "prompt": "q", "target_new": "u"}\n')
    with pytest.raises(RecordError, match=r"dups.jsonl: record 1: field 'id' 'x' repeats"):
        load_records(path)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="unknown format"):
        load_records(DATA / "plain.json", format="nope")
    with pytest.raises(ValueError, match="unknown task"):
        load_records(DATA / "plain.json", task="nope")
