"""Reading the framework's JSON files: a damaged one is a one-line error naming it."""
from __future__ import annotations

import json
from pathlib import Path

from framework.errors import UserError


def read_json(path: str | Path, what: str):
    """The content of JSON file ``path`` (``what`` says what it is, for the error)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} ({what}) is damaged ({err}); delete it and rerun the stage "
                        "that writes it (force=true), or restore it from a backup") from err
