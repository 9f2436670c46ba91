"""What an edit is about and what kind of thing that is: best guesses the page shows for the user to
correct, and the built-in lists of comparable subjects (``instructedit/assets/blast_radius.json``).

- :func:`guess_subject` (from :mod:`instructedit.editing.subject_guess`): the longest run of
  capitalised words of the prompt, a sentence-initial "The"/"What"/... dropped.
- :meth:`Catalog.guess_kind`: the kind whose list holds the subject, else whose cue words the
  subject's name or the prompt contains, else ``person`` for a capitalised name, else ``other``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from ..editing.subject_guess import capitalised, guess_subject

__all__ = ["Catalog", "Kind", "default_catalog", "guess_subject", "OTHER", "PERSON"]

OTHER = "other"
PERSON = "person"


@dataclass(frozen=True)
class Kind:
    """One kind of subject: comparable subjects, other-fact templates (``{}`` = the subject) and cue
    words of a subject's name and of a prompt."""

    name: str
    label: str
    subjects: tuple[str, ...]
    facts: tuple[str, ...]
    subject_cues: tuple[str, ...] = ()
    prompt_cues: tuple[str, ...] = ()


def _has_phrase(text: str, phrase: str) -> bool:
    left = r"\b" if phrase[0].isalnum() else ""
    right = r"\b" if phrase[-1].isalnum() else ""
    return re.search(left + re.escape(phrase) + right, text) is not None


@dataclass(frozen=True)
class Catalog:
    """The kinds of subject, in the order of the page's dropdown."""

    kinds: tuple[Kind, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(k.name for k in self.kinds)

    def get(self, name: str) -> Kind:
        for kind in self.kinds:
            if kind.name == name:
                return kind
        raise KeyError(name)

    def guess_kind(self, subject: str, prompt: str = "") -> str:
        """The kind of ``subject`` (see the module doc)."""
        subject = (subject or "").strip()
        low = subject.lower()
        for kind in self.kinds:
            if low and low in (s.lower() for s in kind.subjects):
                return kind.name
        words = set(re.findall(r"[\w.]+", low))
        for kind in self.kinds:
            if any(cue in words or (" " in cue and _has_phrase(low, cue)) for cue in kind.subject_cues):
                return kind.name
        text = (prompt or "").lower().replace(low, " ") if low else (prompt or "").lower()
        scores = {kind.name: sum(len(cue.split()) for cue in kind.prompt_cues if _has_phrase(text, cue))
                  for kind in self.kinds}
        best = max(scores, key=lambda name: scores[name])  # the first kind wins a tie
        if scores[best] > 0:
            return best
        names = subject.split()
        if len(names) >= 2 and all(capitalised(n) for n in names) and PERSON in self.names:
            return PERSON
        return OTHER if OTHER in self.names else self.kinds[-1].name


def parse_catalog(data: dict) -> Catalog:
    """A :class:`Catalog` from the asset's JSON document."""
    kinds = []
    for name, spec in data["kinds"].items():
        kinds.append(Kind(name=name, label=spec.get("label", name), subjects=tuple(spec["subjects"]),
                          facts=tuple(spec["facts"]), subject_cues=tuple(spec.get("subject_cues", ())),
                          prompt_cues=tuple(spec.get("prompt_cues", ()))))
    if not kinds:
        raise ValueError("the blast radius catalog has no kinds")
    return Catalog(tuple(kinds))


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    """The shipped catalog (``instructedit/assets/blast_radius.json``), read once."""
    text = resources.files("instructedit").joinpath("assets/blast_radius.json").read_text(encoding="utf-8")
    return parse_catalog(json.loads(text))
