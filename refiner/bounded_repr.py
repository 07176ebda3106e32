"""`bounded_repr`: a value as short text for error messages, whatever its size or nesting.

Config files and checkpoints come from users; quoting a value in a message must not expand a YAML alias
bomb (a few hundred bytes that stand for billions of list items) or a deeply nested JSON value.
"""

from __future__ import annotations

import reprlib
from typing import Any


def bounded_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, visiting at most a few items per level."""
    formatter = reprlib.Repr()
    formatter.maxlevel = 2
    formatter.maxlist = formatter.maxtuple = formatter.maxdict = formatter.maxset = 4
    formatter.maxstring = formatter.maxother = limit
    text = formatter.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
