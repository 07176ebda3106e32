"""One module per page (not named pages/, which Streamlit would treat as its old multipage folder), each with a ``render(ctx)`` function called by `app.main`."""
