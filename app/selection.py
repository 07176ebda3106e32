"""The shared selection (model slots, image, layer, head, query token) and its place in the URL.

The URL is the source of truth when a session starts (a shared link restores the view); afterwards the
sidebar widgets own the values and every run writes them back, so the address bar always describes what
is on screen. Only these short strings live in session state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

URL_KEYS = ("a", "b", "img", "layer", "head", "q")
HEAD_FUSIONS = ("mean", "max")


@dataclass(frozen=True)
class Selection:
    """What the user is looking at.

    Attributes:
        a, b: model sources of the two slots.
        img: image key.
        layer: 1-based layer of model A (model B's layer follows by relative depth).
        head: "mean", "max", or a head index as text.
        q: query token index in model A's sequence (0 = CLS).
    """

    a: str
    b: str
    img: str
    layer: int = 1
    head: str = "mean"
    q: int = 0

    def to_url(self) -> Dict[str, str]:
        """The selection as query parameters."""
        return {"a": self.a, "b": self.b, "img": self.img, "layer": str(self.layer), "head": self.head,
                "q": str(self.q)}


def parse_int(text: Optional[str], default: int, low: int, high: int) -> int:
    """An integer from the URL, clamped to [low, high]; the default for anything unreadable."""
    try:
        value = int(str(text))
    except (TypeError, ValueError):
        return default
    return min(max(value, low), high)


def parse_head(text: Optional[str], num_heads: int) -> str:
    """A valid head choice from the URL ("mean" when the text names no fusion and no existing head)."""
    if text in HEAD_FUSIONS:
        return str(text)
    if text is not None and str(text).isdigit() and int(text) < num_heads:
        return str(int(text))
    return "mean"


def head_value(head: str):
    """The head choice as `app.maps.head_matrix` takes it: an int index or a fusion name."""
    return int(head) if head.isdigit() else head


def url_changes(current: Mapping[str, str], selection: Selection) -> Dict[str, str]:
    """The query parameters to write (empty when the URL already says the same)."""
    wanted = selection.to_url()
    return {} if all(current.get(k) == v for k, v in wanted.items()) else wanted
