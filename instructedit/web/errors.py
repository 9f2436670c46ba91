"""The one exception type whose message is shown to the user as it is."""
from __future__ import annotations

from ..errors import UserFacingError


class UserError(UserFacingError, ValueError):
    """A request cannot be carried out for a reason the user can fix; nothing changed.

    The message is one readable sentence (shown in the page and returned to API clients).
    """
