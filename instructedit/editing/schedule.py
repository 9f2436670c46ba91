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
    ``strength`` multiplies every pass's update. ``EditSchedule()`` is the one step the
    network was trained for. A checkpoint may carry a calibrated schedule (``edit_schedule`` in
    its ``editor.json``, chosen on the validation split).
    """

    steps: int = 1
    strength: float = 1.0

    MAX_STEPS = 8
    MAX_STRENGTH = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= self.MAX_STEPS:
            raise ValueError(f"edit steps must be an integer from 1 to {self.MAX_STEPS}, got {self.steps!r}")
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not 0 < float(self.strength) <= self.MAX_STRENGTH:
            raise ValueError(f"edit strength must be a number in (0, {self.MAX_STRENGTH:g}], "
                             f"got {self.strength!r}")

    @classmethod
    def from_dict(cls, data: dict | None) -> EditSchedule:
        """The schedule stored in a checkpoint's metadata (missing: the trained single step)."""
        if not data:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"edit_schedule must be an object, got {type(data).__name__}")
        unknown = set(data) - {"steps", "strength"}
        if unknown:
            raise ValueError(f"edit_schedule has unknown fields: {', '.join(sorted(unknown))}")
        return cls(steps=data.get("steps", 1), strength=float(data.get("strength", 1.0)))

    def to_dict(self) -> dict:
        return {"steps": self.steps, "strength": float(self.strength)}

    @property
    def is_default(self) -> bool:
        return self.steps == 1 and float(self.strength) == 1.0

    def label(self) -> str:
        return "" if self.is_default else f"steps {self.steps}, strength {float(self.strength):g}"
