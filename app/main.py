"""Streamlit entry point: ``streamlit run app/main.py`` (or ``refiner app``).

The sidebar (model slots, image, layer, head, query) is drawn here, before the page, so its widgets are
common to every page and keep their values when the user switches pages.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

# `streamlit run app/main.py` puts app/ on sys.path, not the repository; the app imports `app.*`, `refiner`
# and `analysis` as packages.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app.screens import analysis, compare, dataset, models  # noqa: E402
from app.sidebar import Context, render_sidebar  # noqa: E402


def _page(render: Callable[[Context], None], holder: dict) -> Callable[[], None]:
    def run() -> None:
        ctx: Context = holder["ctx"]
        for error in ctx.errors:
            st.warning(error)
        render(ctx)
    return run


def main() -> None:
    """Build the navigation, draw the shared sidebar, run the chosen page."""
    st.set_page_config(page_title="Refiner attention", layout="wide")
    holder: dict = {}
    pages = [
        st.Page(_page(compare.render, holder), title="Compare", url_path="compare", default=True),
        st.Page(_page(analysis.render, holder), title="Analysis", url_path="analysis"),
        st.Page(_page(dataset.render, holder), title="Dataset", url_path="dataset"),
        st.Page(_page(models.render, holder), title="Models", url_path="models"),
    ]
    page = st.navigation(pages)
    holder["ctx"] = render_sidebar()
    page.run()


main()
