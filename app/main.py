"""Streamlit entry point: ``streamlit run app/main.py`` (or ``refiner app``).

The sidebar (model slots, image, layer, head, query) is drawn here, before the page, so its widgets are
common to every page and keep their values when the user switches pages.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run app/main.py` puts app/ on sys.path, not the repository; the app imports `app.*`, `refiner`
# and `analysis` as packages.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import streamlit as st  # noqa: E402

from app.charts import preload_plotly  # noqa: E402
from app.sidebar import render_sidebar, set_context  # noqa: E402


ENTRIES = Path(__file__).resolve().parent / "entries"


def main() -> None:
    """Build the navigation, draw the shared sidebar, run the chosen page.

    Pages are small scripts in ``app/entries`` (so ``AppTest.switch_page`` can open them); each calls its
    ``render`` with the context drawn here, passed through a context variable of this run's thread.
    """
    st.set_page_config(page_title="Refiner attention", layout="wide")
    preload_plotly()  # first, so the browser evaluates plotly.js while the sidebar and the page arrive
    pages = [
        # Served at "/"; a default page still reserves a pathname, so it gets one that is not "compare".
        st.Page(ENTRIES / "compare.py", title="Compare", url_path="home", default=True),
        st.Page(ENTRIES / "analysis.py", title="Analysis", url_path="analysis"),
        st.Page(ENTRIES / "dataset.py", title="Dataset", url_path="dataset"),
        st.Page(ENTRIES / "models.py", title="Models", url_path="models"),
        # The default page is served at "/", so "/compare" (the path the page's name suggests, and what older
        # links used) would pop up "Page not found"; this hidden alias runs the same page there.
        st.Page(ENTRIES / "compare.py", title="Compare", url_path="compare", visibility="hidden"),
    ]
    page = st.navigation(pages)
    set_context(render_sidebar())
    page.run()


main()
