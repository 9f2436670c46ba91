"""The one user-error type: what went wrong with a request, said as a sentence for people.

Every error a person can cause (a bad prompt, a missing checkpoint, a wrong model for a
checkpoint, a malformed data file) derives from :class:`UserFacingError`; the CLI prints it as one
line with exit status 2 and the app shows it as a message, both through :func:`sentence`.
Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserFacingError(Exception):
    """An expected failure caused by the input; nothing changed."""


def sentence(message: object) -> str:
    """``message`` as one capitalised sentence on one line."""
    text = " ".join(str(message).split())
    if not text:
        return "The request could not be carried out."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
