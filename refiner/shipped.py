"""Where the shipped vanilla/refined pair lives, in a repository checkout and in an installed copy.

The pair is the repository's top-level ``checkpoints/`` folder; a built wheel carries the same files as
package data under ``refiner/shipped_checkpoints`` (setup.py). One setting overrides both:
``$REFINER_APP_CHECKPOINTS``, a folder of checkpoint folders (the app's model slots and the shipped names
``refiner analyze`` accepts come from it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

CHECKPOINTS_ENV = "REFINER_APP_CHECKPOINTS"
DEFAULT_PAIR = ("vanilla", "refined")

_PACKAGE = Path(__file__).resolve().parent
_INSTALLED = _PACKAGE / "shipped_checkpoints"   # a wheel's package data
_CHECKOUT = _PACKAGE.parent / "checkpoints"     # the repository (also an editable install)


def checkpoint_root() -> Path:
    """The folder holding the shipped checkpoint folders.

    Returns:
        ``$REFINER_APP_CHECKPOINTS`` when set, else the installed package data when present, else the
        repository's ``checkpoints/`` (which may not exist; callers say so).
    """
    override = os.environ.get(CHECKPOINTS_ENV)
    if override:
        return Path(override).expanduser()
    return _INSTALLED if _INSTALLED.is_dir() else _CHECKOUT


def shipped_checkpoint(name: str) -> Optional[Path]:
    """The folder of the shipped checkpoint ``name`` (e.g. "vanilla"), or None when there is none by that name.

    Only a plain folder name under `checkpoint_root` counts (no path separators), so a source such as
    ``runs/x`` or a timm model name is never mistaken for one.
    """
    if not name or name != Path(name).name or name.startswith("."):
        return None
    folder = checkpoint_root() / name
    return folder if (folder / "config.json").is_file() else None
