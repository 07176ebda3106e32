"""Page script of the Dataset page: draws it for the context `app.main` prepared in this same run."""

from app.screens import dataset
from app.sidebar import current_context, show_context_errors

show_context_errors()
dataset.render(current_context())
