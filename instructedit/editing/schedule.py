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
    ``EditSchedule()`` is the one step the network was trained for. A checkpoint may carry a
    calibrated schedule (``edit_schedule`` in its ``editor.json``, chosen on the validation split).
    """

    steps: int = 1
    strength: float = 1.0
    rekey: bool = False

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

    @classmethod
    def from_dict(cls, data: dict | None) -> EditSchedule:
        """The schedule stored in a checkpoint's metadata (missing: the trained single step)."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"edit_schedule must be an object, got {type(data).__name__}")
        unknown = set(data) - {"steps", "strength", "rekey"}
        if unknown:
            raise ValueError(f"edit_schedule has unknown fields: {', '.join(sorted(unknown))}")
        return cls(steps=data.get("steps", 1), strength=float(data.get("strength", 1.0)), rekey=data.get("rekey", False))

    def to_dict(self) -> dict:
        """Its fields (``rekey`` only when on, so schedules stored before it read the same)."""
        out = {"steps": self.steps, "strength": float(self.strength)}
        if self.rekey:
            out["rekey"] = True
        return out

    @property
    def is_default(self) -> bool:
        return self.steps == 1 and float(self.strength) == 1.0 and not self.rekey

    def label(self) -> str:
        if self.is_default:
            return ""
        return f"steps {self.steps}, strength {float(self.strength):g}" + (", re-keyed" if self.rekey else "")

    def short(self) -> str:
        """``4x0.4`` (4 passes at strength 0.4), ``4x0.4r`` re-keyed: how ``calibrate`` writes it."""
        return f"{self.steps}x{float(self.strength):g}" + ("r" if self.rekey else "")

    def with_overrides(self, steps: int | None = None, strength: float | None = None,
                       rekey: bool | None = None) -> EditSchedule:
        """This schedule with the given fields replaced (``None``: kept); ``ValueError`` if out of range."""
        return EditSchedule(steps=self.steps if steps is None else steps,
                            strength=self.strength if strength is None else strength,
                            rekey=self.rekey if rekey is None else rekey)
