"""The rule parameters of SPEC §3 and §6 as one frozen, validated object.

Every parameter can be overridden per run by name, from Python
(``Params(max_requests=1)`` or ``Params().replace(...)``) or from the command
line (``--set max_requests=1``, parsed by :func:`parse_overrides`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import UsageError

__all__ = ["Params", "ParamError", "parse_overrides"]


class ParamError(UsageError):
    """A rule parameter has an unknown name or an invalid value (a usage error, exit 2)."""


# name -> (kind, minimum); kind "int" or "float"; minimum None = any value.
_RULES: dict[str, tuple[str, float | None]] = {
    "default_box_size": ("int", 1),
    "max_requests": ("int", 0),
    "request_window_days": ("int", 0),
    "repeat_window_days": ("int", 0),
    "explore_slots": ("int", 0),
    "max_per_genre": ("int", 1),
    "prior_weight": ("float", 0),
    "own_weight_2": ("float", None),
    "own_weight_3": ("float", None),
    "own_weight_4": ("float", None),
    "genre_weight": ("float", None),
    "favorite_genre_bonus": ("float", None),
    "new_days": ("int", 0),
    "new_bonus": ("float", None),
    "explore_jitter": ("float", None),
    "stock_max_rounds": ("int", 1),
}


@dataclasses.dataclass(frozen=True)
class Params:
    """Rule parameters of SPEC §3 and §6, with the specification's defaults.

    Examples:
        >>> Params().max_per_genre
        3
        >>> Params(max_requests=1).replace(explore_slots=0).explore_slots
        0
    """

    default_box_size: int = 8
    max_requests: int = 2
    request_window_days: int = 90
    repeat_window_days: int = 60
    explore_slots: int = 2
    max_per_genre: int = 3
    prior_weight: float = 20
    own_weight_2: float = -1.0
    own_weight_3: float = 0.5
    own_weight_4: float = 1.5
    genre_weight: float = 0.5
    favorite_genre_bonus: float = 0.5
    new_days: int = 28
    new_bonus: float = 0.5
    explore_jitter: float = 0.5
    stock_max_rounds: int = 100

    def __post_init__(self) -> None:
        for name, (kind, minimum) in _RULES.items():
            value = getattr(self, name)
            object.__setattr__(self, name, _coerce(name, value, kind, minimum))

    @classmethod
    def names(cls) -> list[str]:
        """All parameter names, in SPEC order."""
        return list(_RULES)

    def replace(self, **changes: Any) -> Params:
        """Return a copy with some parameters changed (names are checked)."""
        return Params.from_mapping({**self.to_dict(), **changes})

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Params:
        """Build from a name -> value mapping; unknown names are an error."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(_RULES))
        if unknown:
            raise ParamError(
                f"unknown rule parameter {', '.join(map(repr, unknown))}; "
                f"valid names: {', '.join(_RULES)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, int | float]:
        """Every parameter with its value, in SPEC order (for summary.json)."""
        return {name: getattr(self, name) for name in _RULES}


def _coerce(name: str, value: Any, kind: str, minimum: float | None) -> int | float:
    if isinstance(value, bool):
        raise ParamError(f"rule parameter {name!r} must be a number, got {value!r}")
    if isinstance(value, str):
        value = _parse_number(name, value, kind)
    if kind == "int":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) and not hasattr(value, "__index__"):
            raise ParamError(f"rule parameter {name!r} must be an integer, got {value!r}")
        value = int(value)
    else:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ParamError(f"rule parameter {name!r} must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise ParamError(f"rule parameter {name!r} must be finite, got {value!r}")
        if name == "prior_weight" and value <= 0:
            raise ParamError(
                f"rule parameter 'prior_weight' must be > 0 (the prior of an unrated snack "
                f"is undefined otherwise), got {value!r}"
            )
    if minimum is not None and value < minimum:
        raise ParamError(f"rule parameter {name!r} must be >= {minimum:g}, got {value!r}")
    return value


def _parse_number(name: str, text: str, kind: str) -> int | float:
    text = text.strip()
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        expected = "an integer" if kind == "int" else "a number"
        raise ParamError(f"rule parameter {name!r} must be {expected}, got {text!r}") from None


def parse_overrides(items: Iterable[str]) -> dict[str, int | float]:
    """Parse ``NAME=VALUE`` strings (the CLI's ``--set``) into a checked mapping.

    Examples:
        >>> parse_overrides(["max_requests=1", "genre_weight=0.25"])
        {'max_requests': 1, 'genre_weight': 0.25}
    """
    out: dict[str, int | float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ParamError(f"expected NAME=VALUE, got {item!r}")
        if name not in _RULES:
            raise ParamError(
                f"unknown rule parameter {name!r}; valid names: {', '.join(_RULES)}"
            )
        kind, minimum = _RULES[name]
        out[name] = _coerce(name, text, kind, minimum)
    return out
