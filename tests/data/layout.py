"""A miniature data folder laid out like the real one (``docs/data.md``), for split tests.

The records are made up; some CounterFact training records deliberately share a subject or
prompt with the val/test files so that leak removal has something to remove.
"""
from __future__ import annotations

import json
from pathlib import Path

CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Vienna", "Lisbon", "Oslo", "Prague", "Dublin",
          "Athens", "Warsaw", "Bern", "Riga", "Sofia", "Tallinn", "Zagreb", "Vilnius", "Minsk",
          "Kyiv", "Helsinki"]


def _cf(case_id: int, subject: str, prompt: str | None = None) -> dict:
    return {"case_id": case_id, "prompt": prompt or f"{subject} was born in", "subject": subject,
            "target_new": CITIES[case_id % len(CITIES)],
            "ground_truth": CITIES[(case_id + 3) % len(CITIES)],
            "rephrase_prompt": f"The birthplace of {subject} is",
            "locality_prompt": f"Someone else unrelated to {subject} was born in",
            "locality_ground_truth": "London"}


def counterfact_files() -> dict[str, list[dict]]:
    train = [_cf(i, f"Painter {i}") for i in range(12)]
    train.append(_cf(100, "Sculptor 1"))                          # leaks: subject in test
    train.append(_cf(101, "Poet 2", prompt="Poet 2 died in"))       # leaks: subject+prompt in val
    train.append(_cf(102, "Singer 9", prompt="Dancer 3 was born in"))  # leaks: prompt in test
    val = [_cf(200 + i, f"Poet {i}", prompt=f"Poet {i} died in") for i in range(4)]
    test = [_cf(300 + i, f"Dancer {i}") for i in range(5)] + [_cf(305, "Sculptor 1")]
    knowedit = [{"subject": f"Composer {i}", "prompt": f"Composer {i} was born in",
                 "target_new": "Oslo", "ground_truth": "Bergen",
                 "portability": {"Subject_Aliasing": [{"prompt": f"C{i} was born in",
                                                       "ground_truth": "Oslo"}]},
                 "locality": {"Relation_Specificity": [{"prompt": f"Composer {i} wrote",
                                                        "ground_truth": ""}]}}
                for i in range(3)]
    return {"counterfact/counterfact-train.json": train, "counterfact/counterfact-val.json": val,
            "counterfact/counterfact-edit.json": test, "counterfact/knowedit-train_cf.json": knowedit}


def recent_file() -> list[dict]:
    return [{"subject": f"Athlete {i}", "prompt": f"The sports team of Athlete {i} is",
             "target_new": f"Team {i % 7}", "portability": {},
             "locality": {"Relation_Specificity": [
                 {"prompt": f"The gender of Athlete {i} is", "ground_truth": [["female", "woman"]]},
                 {"prompt": f"The coach of Athlete {i} is", "ground_truth": [[]]}]}}
            for i in range(20)]


def convsent_file(prefix: str, count: int) -> list[dict]:
    return [{"ent": f"{prefix} topic {i}",
             "pos": [f" I really like {prefix} topic {i}, it is great. ", " It is wonderful. "],
             "neg": [f" I dislike {prefix} topic {i}, it is awful. ", " It is terrible. "]}
            for i in range(count)]


def zsre_file() -> list[dict]:
    rows = []
    for i in range(30):
        subject = f"River {i % 20}"
        rows.append({"subject": subject, "prompt": f"Question {i}: where does {subject} flow?",
                     "target_new": "the sea", "ground_truth": ["a lake"],
                     "rephrase_prompt": f"Question {i}: {subject} flows into what?",
                     "locality": {"Relation_Specificity": [{"prompt": f"The length of {subject} is",
                                                            "ground_truth": ["10 km"]}]},
                     "portability": {"Reasoning": [{"prompt": f"Is {subject} salty at its end?",
                                                    "ground_truth": "yes"}]},
                     "cond": f"a lake >> the sea || Question {i}"})
    return rows


def make_data_dir(root: Path) -> Path:
    """Write the miniature data folder under ``root`` and return it."""
    files = counterfact_files()
    files["recent/recent_train.json"] = recent_file()
    files["convsent/blender_val.json"] = convsent_file("val", 20)
    files["convsent/blender_test.json"] = convsent_file("test", 5)
    files["zsre/ZsRE-test-all.json"] = zsre_file()
    for rel, rows in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return root
