"""Where hpmkd writes: checked before a run, without creating anything."""

from __future__ import annotations

import os
from pathlib import Path

from hpmkd.errors import UserError


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """UserError naming ``path`` unless it is a writable directory or could be created as one."""
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == path else f" ({existing} is a file)"
        raise UserError(f"{what} '{path}' is not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} '{path}' is not writable ({existing} is read-only)")
