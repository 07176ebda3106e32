"""The shared selection (model slots, image, layer, head, query token, display options) and the URL.

The URL is the source of truth when a session starts (a shared link restores the whole view) and whenever
the browser changes it (Back/Forward, an edited address): the sidebar then sets the widgets from it.
Otherwise the widgets own the values and every run writes them back, so the address bar always describes
what is on screen, and each change is a step the Back button returns to. Only these short strings live in
session state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence

URL_KEYS = ("a", "b", "img", "layer", "head", "q", "kind", "tab", "opacity", "shared", "fusion")
HEAD_FUSIONS = ("mean", "max")
MAP_KINDS = ("effective", "softmax")
ROLLOUT_FUSIONS = ("mean", "max", "min")
# Compare page tabs and their short names in the URL.
COMPARE_TABS = ("All heads", "N x N matrix", "Softmax vs effective", "Difference A - B", "Raw maps")
TAB_SLUGS = dict(zip(COMPARE_TABS, ("heads", "matrix", "softeff", "diff", "raw")))
DEFAULT_OPACITY = 0.6


@dataclass(frozen=True)
class Selection:
    """What the user is looking at.

    Attributes:
        a, b: model sources of the two slots.
        img: image key.
        layer: 1-based layer of model A (model B's layer follows by relative depth).
        head: "mean", "max", or a head index as text.
        q: query token index in model A's sequence (0 = CLS).
        kind: map kind of the Compare page ("effective" or "softmax").
        tab: open Compare tab (one of `COMPARE_TABS`).
        opacity: overlay opacity in [0, 1].
        shared: both models' overlays on one colour scale.
        fusion: rollout head fusion of the Analysis page.
    """

    a: str
    b: str
    img: str
    layer: int = 1
    head: str = "mean"
    q: int = 0
    kind: str = MAP_KINDS[0]
    tab: str = COMPARE_TABS[0]
    opacity: float = DEFAULT_OPACITY
    shared: bool = False
    fusion: str = ROLLOUT_FUSIONS[0]

    def to_url(self) -> Dict[str, str]:
        """The selection as query parameters."""
        return {"a": self.a, "b": self.b, "img": self.img, "layer": str(self.layer), "head": self.head,
                "q": str(self.q), "kind": self.kind, "tab": TAB_SLUGS.get(self.tab, TAB_SLUGS[COMPARE_TABS[0]]),
                "opacity": f"{self.opacity:g}", "shared": "1" if self.shared else "0", "fusion": self.fusion}


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


def parse_choice(text: Optional[str], options: Sequence[str], default: str) -> str:
    """``text`` if it is one of ``options``, else ``default``."""
    return str(text) if text in options else default


def parse_opacity(text: Optional[str]) -> float:
    """An opacity in [0, 1] on the slider's 0.05 steps; the default for anything unreadable."""
    try:
        value = float(str(text))
    except (TypeError, ValueError):
        return DEFAULT_OPACITY
    if value != value:  # NaN
        return DEFAULT_OPACITY
    return round(min(max(value, 0.0), 1.0) * 20) / 20


def parse_flag(text: Optional[str]) -> bool:
    """"1"/"true"/"yes" -> True, anything else False."""
    return str(text).lower() in ("1", "true", "yes")


def parse_tab(text: Optional[str]) -> str:
    """The Compare tab named by its URL short name (or its label); the first tab otherwise."""
    for label, slug in TAB_SLUGS.items():
        if text in (slug, label):
            return label
    return COMPARE_TABS[0]


def head_value(head: str):
    """The head choice as `analysis.compare_view.head_matrix` takes it: an int index or a fusion name."""
    return int(head) if head.isdigit() else head


def url_changes(current: Mapping[str, str], selection: Selection) -> Dict[str, str]:
    """The query parameters to write (empty when the URL already says the same)."""
    wanted = selection.to_url()
    return {} if all(current.get(k) == v for k, v in wanted.items()) else wanted
