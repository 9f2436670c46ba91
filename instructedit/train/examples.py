"""Turn edit records into training examples: edit input, outer (generalisation) input, locality."""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ..data.neighbours import NeighbourIndex
from ..data.records import EditRecord
from ..instructions import build_edit_input
from ..scoring import answer_text


@dataclass(frozen=True)
class TrainingExample:
    """One meta-training example, fully rendered as text.

    ``edit_prompt``/``target`` make the edit (keyed on ``subject``'s tokens when the editor is
    keyed on the subject); ``outer_prompt``/``outer_target`` score it (a rephrase where the
    record has one, wrapped like the edit); ``typed_prompt`` is the prompt as typed (editors that
    edit from it too read it); ``plain_prompt`` scores it on text as a person types
    it (the prompt or a rephrase, never wrapped). ``continuation``: the unedited model's own greedy
    token ids after ``continuation_prefix`` (the typed prompt followed by the target), filled in by
    the trainer when the continuation KL is on; ``neighbour_continuation`` likewise after
    ``neighbour_prefix`` (the neighbour's prompt and true answer). ``locality`` is an unwrapped (prompt, answer)
    pair whose predictions must not move; ``neighbour`` is a harder one: the edit's own sentence
    with another subject (falls back to the locality pair where the data has none).
    """

    record_id: str
    task: str
    instruction_index: int | None
    edit_prompt: str
    target: str
    outer_prompt: str
    outer_target: str
    locality_prompt: str
    locality_answer: str
    plain_prompt: str = ""
    neighbour_prompt: str = ""
    neighbour_answer: str = ""
    subject: str | None = None
    typed_prompt: str = ""
    continuation: tuple[int, ...] = ()
    neighbour_continuation: tuple[int, ...] = ()

    @property
    def continuation_prefix(self) -> str:
        """The typed prompt followed by the new target: the text whose continuation must not loop."""
        return (self.typed_prompt or self.edit_prompt) + answer_text(self.target)

    @property
    def neighbour_prefix(self) -> str:
        """The neighbour's prompt followed by its true answer: its sentence must go on as before."""
        return (self.neighbour_prompt or self.locality_prompt) + answer_text(
            self.neighbour_answer or self.locality_answer)


def render_example(record: EditRecord, instruction_index: int | None, rng: random.Random,
                   fallback_locality: Sequence[tuple[str, str]] = (),
                   neighbours: NeighbourIndex | None = None, plain_rephrase_share: float = 0.5,
                   ) -> TrainingExample:
    """Render ``record`` with instruction ``instruction_index`` (None: no instruction).

    ConvSent placeholders are filled from the record's topic and label; its outer target is a
    different response of the same sentiment, so the editor learns a sentiment, not a string.
    The plain input is a plain rephrase with probability ``plain_rephrase_share`` (where the
    record has one), else the plain prompt.
    """
    def wrap(prompt: str) -> str:
        return build_edit_input(record.task, prompt, instruction_index, topic=record.topic, label=record.label)

    edit_prompt = wrap(record.prompt)
    outer_prompt = wrap(rng.choice(record.rephrases)) if record.rephrases else edit_prompt
    outer_target = record.target_new
    if record.task == "convsent":
        others = [r for r in record.responses if r.strip() and r.strip() != record.target_new.strip()]
        if others:
            outer_target = rng.choice(others).strip()
    use_rephrase = bool(record.rephrases) and rng.random() < plain_rephrase_share
    plain_prompt = (rng.choice(record.rephrases) if use_rephrase else record.prompt).strip()
    if record.locality:
        probe = rng.choice(record.locality)
        loc = (probe.prompt, probe.answer)
    elif fallback_locality:
        loc = rng.choice(list(fallback_locality))
    else:
        raise ValueError(f"record {record.id} has no locality probe and no fallback was given")
    found = neighbours.neighbours(record, 1, seed=rng.random()) if neighbours is not None else []
    neighbour = (found[0].prompt, found[0].answer) if found else loc
    subject = record.subject or record.topic
    return TrainingExample(record.id, record.task, instruction_index, edit_prompt,
                           record.target_new, outer_prompt, outer_target, loc[0], loc[1],
                           plain_prompt, neighbour[0], neighbour[1], subject, record.prompt.strip())
