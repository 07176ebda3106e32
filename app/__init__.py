"""app: the Streamlit app (DESIGN section 6). The only package that imports ``streamlit``.

Entry point ``app/main.py`` (``refiner app`` or ``streamlit run app/main.py``); pages in ``app/screens``.
Modules without a ``st.`` call (`selection`, `maps`, `views`) hold the logic the pages use, so it is
testable without a running app.
"""
