"""A wrapper that keeps a credential out of reprs, logs and tracebacks."""

from __future__ import annotations

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
