"""Page script of the Analysis page: draws it for the context `app.main` prepared in this same run."""

from app.screens import analysis
from app.sidebar import current_context, show_context_errors

show_context_errors()
analysis.render(current_context())
