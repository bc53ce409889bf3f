"""Finding problems: the registered ones (entry points), ``module:Class`` names, and the
problem that made a target_dir. Used by the command line and every command that attaches to
a finished target_dir (``score``, ``predict``, ``evaluate``, ``serve``, ``export``)."""
from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

from framework.errors import UserError
from framework.registry import closest
from framework.workspace import owner

ENTRY_POINT_GROUP = "framework.problems"


def registered_problems() -> dict[str, str]:
    """Short name → ``module:Class`` from the ``framework.problems`` entry points."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_problem(name: str):
    """A problem class from a short name (``kws``) or ``package.module:Class``."""
    target = registered_problems().get(name, name)
    if ":" not in target:
        known = registered_problems()
        raise UserError(f"unknown problem '{name}'{closest(name, known)} Choose one of: "
                        f"{', '.join(sorted(known))}, or give module:Class")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import '{module_name}' for problem '{name}' ({err}); the "
                        "module must be importable: on PYTHONPATH (e.g. run from the folder "
                        "holding it) or in an installed package") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"module '{module_name}' has no class '{class_name}'")
    return cls


def attached_problem(target_dir: str, named: str | None, device: str):
    """The problem that made ``target_dir``, attached to it. Only a registered problem (entry
    point) is imported on the strength of target_dir's ``problem.json``; any other module must
    be named by the user (``--problem module:Class``), so a copied folder runs no one's code."""
    made_by = owner(Path(target_dir))
    if named is None:
        registered = {v: k for k, v in registered_problems().items()}
        if made_by not in registered:
            raise UserError(f"{target_dir} was made by '{made_by}', which is not a registered "
                            "problem; if you trust that module, name it: --problem "
                            f"{made_by}")
        named = registered[made_by]
    return load_problem(named)().attach(target_dir, device)
