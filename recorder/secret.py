"""A wrapper that keeps a credential out of reprs, logs and tracebacks."""

from __future__ import annotations

import hmac
from typing import Final

_MASK: Final = "Secret('***')"


class Secret:
    """A string that only shows itself through reveal()."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        """Wrap value."""
        self._value = value

    def reveal(self) -> str:
        """Return the wrapped value."""
        return self._value

    def __repr__(self) -> str:
        """Return a masked representation."""
        return _MASK

    def __str__(self) -> str:
        """Return a masked representation."""
        return _MASK

    def __eq__(self, other: object) -> bool:
        """The same credential (compared in constant time): a config reloaded with the same
        token leaves its target running."""
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        """Consistent with ==."""
        return hash(self._value)
