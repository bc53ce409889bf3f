"""Files the framework reads and disk it needs: a damaged JSON file or a disk too small for
a cache is a one-line error naming the file or folder and what to do."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from framework.errors import UserError


def read_json(path: str | Path, what: str):
    """The content of JSON file ``path`` (``what`` says what it is, for the error)."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} ({what}) is damaged ({err}); delete it and rerun the stage "
                        "that writes it (force=true), or restore it from a backup") from err


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path`` to write; when the block ends it replaces
    ``path`` in one rename, so readers never see half a file. A killed write leaves
    ``.<name>.tmp<pid>`` (the next run removes it: ``workspace.remove_leftovers``); a failed
    one is deleted."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def existing_parent(path: str | Path) -> Path:
    """``path`` itself or its nearest ancestor that exists."""
    return next(p for p in (Path(path), *Path(path).parents) if p.exists())


def require_free_space(folder: Path, need: int, what: str, remedy: str) -> None:
    """Fail before writing ``need`` bytes of ``what`` into ``folder`` (made if missing) when
    the disk has less than that free (with a 5% margin); ``remedy`` says what to change."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need > 0.95 * free:
        raise UserError(f"the {what} needs about {need / 1e9:.2f} GB in {folder} and only "
                        f"{free / 1e9:.2f} GB are free; free some space, point cache_dir at a "
                        f"larger disk, {remedy}")
