"""What a person sees after an InstructEdit edit on the real embedded model (4-bit, as the studio
runs it): the sentence as typed now continues with the new target, while a sentence about another
subject of the same kind keeps its true answer (the editing-quality issue, item 6).

Four of the five facts must hold (``NEEDED``). History: the editor shipped before 2026-11-30
held 1; the network shipped since (middle blocks, keyed on the subject) held 3 with its first
calibrated schedule, 4 passes at 0.4 (Japan's capital did not move; "euro" appeared in the
dollar's sentence), and holds 4 with the schedule calibrated on 2026-12-07, up to 8 passes at 0.3
until the edit holds, which made this test pass (it was a strict expected failure until then).
The fifth, Japan's capital -> Madrid, takes every pass and its neighbour's sentence degenerates
("Italy Italy, ..."; docs/training.md, "Passes until the edit holds"): on the AMD EPYC of
2026-12-07 it failed; on the Intel Xeon (AMX) of 2026-12-08, whose bf16 kernels round otherwise,
the loop still named Rome and the fact counted as held (5 of 5). The bar stays at 4.
"""
from __future__ import annotations

import pytest

from instructedit.editing.editor import EditRequest
from instructedit.editing.editors import load_editor
from instructedit.editing.patches import PatchEngine
from instructedit.editing.subject_guess import guess_subject
from instructedit.measuring.verdicts import contains_answer
from instructedit.model.backbone import load_backbone
from instructedit.model.generation import GenerationConfig, generate

# (prompt, true answer, new target, same-template neighbour, its true answer)
FACTS = (
    ("The Eiffel Tower is located in the city of", "Paris", "Rome",
     "The Louvre is located in the city of", "Paris"),
    ("The official language of France is", "French", "German",
     "The official language of Spain is", "Spanish"),
    ("The capital of Japan is", "Tokyo", "Madrid", "The capital of Italy is", "Rome"),
    ("The Colosseum is located in the city of", "Rome", "London",
     "The Acropolis is located in the city of", "Athens"),
    ("The currency of Japan is the", "yen", "euro", "The currency of the United States is the", "dollar"),
)
NEEDED = 4  # of the five facts


def facts_held(backbone, editor, *, on_unknown=pytest.fail, show=None) -> list[bool]:
    """For each fact: the typed sentence now says the target and its neighbour keeps its answer
    (``show(prompt, after, neighbour, after_neighbour)`` sees the texts)."""
    config = GenerationConfig(max_new_tokens=20)
    held = []
    for prompt, truth, target, neighbour, neighbour_truth in FACTS:
        before = generate(backbone, [prompt, neighbour], config)
        # facts the unedited model knows (else the test would measure nothing): not an expected failure
        if not (contains_answer(before[0], truth) and contains_answer(before[1], neighbour_truth)):
            on_unknown(f"the unedited model does not know this fact: {before}")
        # as the studio makes it: the subject field pre-filled with its guess
        edit = editor.edit(EditRequest(prompt, target, task="counterfact", instruction=0,
                                       subject=guess_subject(prompt)))
        with PatchEngine.activate([edit.patch]):
            after = generate(backbone, [prompt], config)[0]
            after_neighbour = generate(backbone, [neighbour], config)[0]
        if show is not None:
            show(prompt, after, neighbour, after_neighbour)
        held.append(contains_answer(after, target) and contains_answer(after_neighbour, neighbour_truth)
                    and not contains_answer(after_neighbour, target))
    return held


@pytest.mark.slow
def test_an_edit_changes_the_typed_sentence_and_spares_its_neighbour():
    backbone = load_backbone("smollm2-135m", "4bit", device="cpu", fast_4bit=True)
    editor = load_editor("checkpoints/smollm2-135m/instructedit", backbone)
    held = facts_held(backbone, editor)
    assert sum(held) >= NEEDED, held


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.test_real_editing [CHECKPOINT [SCHEDULE]]``: the test's check with another
    editor or edit schedule (``STEPSxSTRENGTH[r][uP]``, as ``calibrate`` writes it, e.g. 6x0.4u0.5),
    printing each fact's texts."""
    import argparse

    from instructedit.evaluate.calibration import parse_schedule

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("checkpoint", nargs="?", default="checkpoints/smollm2-135m/instructedit")
    parser.add_argument("schedule", nargs="?", type=parse_schedule, default=None)
    args = parser.parse_args(argv)
    backbone = load_backbone("smollm2-135m", "4bit", device="cpu", fast_4bit=True)
    editor = load_editor(args.checkpoint, backbone)
    if args.schedule is not None:
        editor = editor.with_schedule(args.schedule)

    def show(prompt, after, neighbour, after_neighbour):
        print(f"{prompt!r} -> {after!r}\n    {neighbour!r} -> {after_neighbour!r}")

    held = facts_held(backbone, editor, on_unknown=lambda message: print("warning:", message), show=show)
    print(f"{sum(held)} of {len(held)} facts held: {held}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
