"""Page script of the Compare page: draws it for the context `app.main` prepared in this same run."""

from app.screens import compare
from app.sidebar import current_context, show_context_errors

show_context_errors()
compare.render(current_context())
