"""How a trained editor's update is applied when an edit is made (no torch here: the app's
configuration validates it before any model loads)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EditSchedule"]


@dataclass(frozen=True)
class EditSchedule:
    """How a trained network's update is applied when an edit is made.

    ``steps`` passes, each computed with the earlier passes' updates active (a pass where the
    edit already holds has a small gradient, so it adds little), their updates summed;
    ``strength`` multiplies every pass's update. ``rekey``: each pass's update is re-keyed on the
    edit's own keys, the subject's tokens in the edit input, the typed prompt and the prompt after a
    few short contexts (:mod:`instructedit.editing.rekey`: ROME's specificity for a MEND update).
    ``until``: passes after the first are taken only while the edit does not hold yet: an edit
    stops once its target's per-token probability (geometric mean) reaches ``until`` on every input
    it is made from (the input as the editor reads it and the prompt as typed), so an edit that
    already holds is not pushed further (``None``: every pass is taken).
    ``EditSchedule()`` is the one step the network was trained for. A checkpoint may carry a
    calibrated schedule (``edit_schedule`` in its ``editor.json``, chosen on the validation split).
    """

    steps: int = 1
    strength: float = 1.0
    rekey: bool = False
    until: float | None = None

    MAX_STEPS = 8
    MAX_STRENGTH = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= self.MAX_STEPS:
            raise ValueError(f"edit steps must be an integer from 1 to {self.MAX_STEPS}, got {self.steps!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not 0 < float(self.strength) <= self.MAX_STRENGTH:
            raise ValueError(f"edit strength must be a number in (0, {self.MAX_STRENGTH:g}], "
                             f"got {self.strength!r}")
        if not isinstance(self.rekey, bool):
            raise ValueError(f"edit rekey must be true or false, got {self.rekey!r}")
        if self.until is not None and (isinstance(self.until, bool) or not isinstance(self.until, (int, float))
                                       or not 0 < float(self.until) < 1):
            raise ValueError(f"edit until must be a probability in (0, 1) (or none), got {self.until!r}")

    @classmethod
    def from_dict(cls, data: dict | None) -> EditSchedule:
        """The schedule stored in a checkpoint's metadata (missing: the trained single step)."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"edit_schedule must be an object, got {type(data).__name__}")
        unknown = set(data) - {"steps", "strength", "rekey", "until"}
        if unknown:
            raise ValueError(f"edit_schedule has unknown fields: {', '.join(sorted(unknown))}")
        return cls(steps=data.get("steps", 1), strength=float(data.get("strength", 1.0)),
                   rekey=data.get("rekey", False), until=data.get("until"))

    def to_dict(self) -> dict:
        """Its fields (``rekey`` and ``until`` only when on, so schedules stored before them read
        the same)."""
        out = {"steps": self.steps, "strength": float(self.strength)}
        if self.rekey:
            out["rekey"] = True
        if self.until is not None:
            out["until"] = float(self.until)
        return out

    @property
    def is_default(self) -> bool:
        return self.steps == 1 and float(self.strength) == 1.0 and not self.rekey and self.until is None

    def label(self) -> str:
        if self.is_default:
            return ""
        return (f"steps {self.steps}, strength {float(self.strength):g}" + (", re-keyed" if self.rekey else "")
                + (f", until p >= {float(self.until):g}" if self.until is not None else ""))

    def describe(self) -> str:
        """In words, for reports and cards: ``8 pass(es) at strength 0.3, until the target's
        probability reaches 0.5``."""
        return (f"{self.steps} pass(es) at strength {float(self.strength):g}"
                + (", each re-keyed on the edit's own keys" if self.rekey else "")
                + (f", until the target's probability reaches {float(self.until):g}" if self.until is not None else ""))

    def short(self) -> str:
        """``4x0.4`` (4 passes at strength 0.4), ``4x0.4r`` re-keyed, ``6x0.4u0.9`` passes after the
        first only until the edit holds at probability 0.9: how ``calibrate`` writes it."""
        return (f"{self.steps}x{float(self.strength):g}" + ("r" if self.rekey else "")
                + (f"u{float(self.until):g}" if self.until is not None else ""))

    def with_overrides(self, steps: int | None = None, strength: float | None = None,
                       rekey: bool | None = None, until: float | None = None) -> EditSchedule:
        """This schedule with the given fields replaced (``None``: kept; ``until=0``: every pass
        taken); ``ValueError`` if out of range."""
        if until is None:
            until = self.until
        elif not isinstance(until, bool) and isinstance(until, (int, float)) and until == 0:
            until = None
        return EditSchedule(steps=self.steps if steps is None else steps,
                            strength=self.strength if strength is None else strength,
                            rekey=self.rekey if rekey is None else rekey, until=until)
