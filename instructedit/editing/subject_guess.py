"""A best guess of what an edit prompt is about, for editors keyed on the subject's tokens when
nobody named the subject (the studio pre-fills its subject field with it; ``edit`` on the command
line uses it when ``--subject`` is not given).

:func:`guess_subject`: the longest run of capitalised words of the prompt ("The mother tongue of
Danielle Darrieux is" -> "Danielle Darrieux"), a sentence-initial "The"/"What"/... dropped; for a
prompt without one, the words after "about"/"on"/"of"/"for" ("What is your opinion on comic
books?" -> "comic books").
"""
from __future__ import annotations

import re

__all__ = ["capitalised", "guess_subject"]

_TOKEN = re.compile(r"[\w.&'’-]+|[,;:!?()\"“”]")
_CONNECTORS = frozenset({"of", "the", "de", "da", "del", "della", "di", "du", "von", "van", "der", "den",
                         "la", "le", "y", "and", "&", "from", "for", "upon"})
_LEADING = frozenset({"the", "a", "an", "what", "who", "whom", "whose", "which", "where", "when", "why",
                      "how", "is", "are", "was", "were", "does", "did", "do", "in", "on", "at", "my",
                      "your", "his", "her", "its", "their", "this", "that", "these", "those", "i", "it",
                      "he", "she", "we", "they", "there", "tell", "please", "name", "if", "after",
                      "before", "since", "during"})
_QUESTION = re.compile(r"\b(?:about|on|of|regarding)\s+(?:the\s+)?([^?]+?)\s*\?\s*$", re.IGNORECASE)
_STATEMENT = re.compile(r"\b(?:of|for|about|on)\s+(?:the\s+)?(.+?)\s+(?:is|are|was|were)\b", re.IGNORECASE)


def capitalised(word: str) -> bool:
    """Whether ``word`` has a capital letter (names, acronyms)."""
    return any(c.isupper() for c in word)


def _runs(prompt: str) -> list[tuple[int, list[str]]]:
    """(index of the first token, words) of every run of capitalised words."""
    runs: list[tuple[int, list[str]]] = []
    current: list[str] = []
    pending: list[str] = []
    start = 0

    def close() -> None:
        nonlocal current, pending
        if current:
            runs.append((start, current))
        current, pending = [], []

    for i, token in enumerate(_TOKEN.findall(prompt)):
        possessive = token.endswith(("'s", "’s"))
        word = token[:-2] if possessive else token
        if word.endswith(".") and word.count(".") == 1:
            word = word[:-1]
        if not word or not any(c.isalnum() for c in word):
            close()
            continue
        if capitalised(word) or (current and word.isdigit()):
            if not current:
                start = i
            current += pending + [word]
            pending = []
        elif current and word.lower() in _CONNECTORS:
            pending.append(word)
        else:
            close()
        if possessive:
            close()
    close()
    return runs


def guess_subject(prompt: str) -> str:
    """A best guess of what ``prompt`` is about (empty when nothing stands out)."""
    prompt = (prompt or "").strip()
    best: list[str] = []
    for start, words in _runs(prompt):
        if start == 0:  # a capitalised sentence opener is no name: "The Eiffel Tower" -> "Eiffel Tower"
            while words and words[0].lower() in _LEADING:
                words = words[1:]
        if len(words) > len(best):
            best = words
    if best:
        return " ".join(best)
    match = _QUESTION.search(prompt) or _STATEMENT.search(prompt)
    return match.group(1).strip() if match else ""
