"""Page script of the Models page: draws it for the context `app.main` prepared in this same run."""

from app.screens import models
from app.sidebar import current_context, show_context_errors

show_context_errors()
models.render(current_context())
