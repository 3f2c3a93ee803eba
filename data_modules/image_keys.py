"""Store-key patterns: how a task's ``image_key`` option turns an example's image into the key of
the region-feature store.

Every data module (and the feature converter's ``--key-format``) describes its pattern with one
``ImageKeyPattern``: the fields the task offers, each with a sample value. The pattern is checked
once, when the data module is built — not empty, valid ``str.format`` syntax, only the task's
fields, and it formats the sample (so ``{image_id:012d}`` on GQA's string ids fails at start-up,
not in the middle of ``setup``) — and the error names the option, the pattern and the allowed
fields. ``format(**values)`` then gives the keys.
"""
from __future__ import annotations

import string
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Union


class ImageKeyPattern:
    """A checked ``str.format`` pattern over ``fields`` (name -> sample value).

    ``where`` names the option in messages, e.g. ``"NLVR2 image_key"``. A pattern with no field
    at all is refused: it would give every image the same key."""

    def __init__(self, pattern: str, fields: Mapping[str, Any], where: str = "image_key"):
        self.pattern = pattern
        self.fields = tuple(fields)
        self.where = where
        self.used = self._check(pattern, dict(fields))

    @property
    def allowed(self) -> str:
        """The fields as they are written in a pattern: ``{stem}, {side}``."""
        return ", ".join("{" + f + "}" for f in self.fields)

    def _error(self, problem: str) -> ValueError:
        return ValueError(f"{self.where} {self.pattern!r}: {problem}; expected a non-empty format string using only "
                          f"{self.allowed} (Python str.format syntax, e.g. 'prefix_{{{self.fields[0]}}}')")

    def _check(self, pattern: str, sample: dict) -> tuple[str, ...]:
        if not isinstance(pattern, str):
            raise self._error(f"a {type(pattern).__name__}, not a string")
        if not pattern:
            raise self._error("empty")
        try:
            used = _field_names(pattern)
        except ValueError as err:
            raise self._error(f"not valid format syntax ({err})") from None
        unknown = [name for name in used if name not in self.fields]
        if unknown:
            shown = ", ".join("{" + name + "}" for name in dict.fromkeys(unknown))
            raise self._error(f"unknown field{'s' if len(set(unknown)) > 1 else ''} {shown}")
        if not used:
            raise self._error("uses no field, so every image would get the same store key")
        try:
            probe = pattern.format(**sample)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
            values = ", ".join(f"{k}={v!r}" for k, v in sample.items())
            raise self._error(f"cannot format {values} ({type(err).__name__}: {err})") from None
        if not probe:
            raise self._error("gives an empty store key")
        return tuple(dict.fromkeys(used))

    def format(self, **values: Any) -> str:
        """The store key for these field values (every field of the pattern must be given)."""
        try:
            return self.pattern.format(**values)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as err:
            given = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ValueError(f"{self.where} {self.pattern!r} cannot format {given} ({type(err).__name__}: {err})") from None

    __call__ = format

    def __str__(self) -> str:
        return self.pattern

    def __repr__(self) -> str:
        return f"ImageKeyPattern({self.pattern!r}, fields={self.fields}, where={self.where!r})"


def _field_names(pattern: str) -> list[str]:
    """Field names of a format string, those nested in format specs (``{x:{w}}``) included;
    ``""`` for an automatic positional field ``{}``. Raises ``ValueError`` on bad syntax."""
    names = []
    for _, name, spec, _ in string.Formatter().parse(pattern):
        if name is not None:
            names.append(name)
        if spec and "{" in spec:
            names += _field_names(spec)
    return names


@lru_cache(maxsize=64)
def _cached(pattern: str, fields: tuple[tuple[str, Any], ...], where: str) -> ImageKeyPattern:
    return ImageKeyPattern(pattern, dict(fields), where)


def key_pattern(pattern: Union[str, ImageKeyPattern], fields: Mapping[str, Any], where: str = "image_key") -> ImageKeyPattern:
    """``pattern`` as an ``ImageKeyPattern`` (checked once per distinct string; a pattern object
    passes through)."""
    if isinstance(pattern, ImageKeyPattern):
        return pattern
    if not isinstance(pattern, str):
        return ImageKeyPattern(pattern, fields, where)  # raises, naming the type
    return _cached(pattern, tuple(fields.items()), where)
