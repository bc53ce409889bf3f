"""A target_dir: who owns it, its log, and a record of every invocation."""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import platform
import shlex
import sys
from pathlib import Path

from framework.config import save_yaml
from framework.errors import UserError
from framework.progress import BarSafeHandler

PACKAGES = ("speech-recipes", "torch", "torchaudio", "numpy", "omegaconf", "pandas",
            "scikit-learn", "soundfile", "tqdm", "matplotlib", "tensorboard")
LOGGERS = ("framework", "corpora")  # the loggers a run's console and log.txt show
LOG_FORMAT = "%(asctime)s %(levelname).1s %(message)s"


def claim(target_dir: Path, problem: str) -> None:
    """Mark target_dir as ``problem``'s; refuse a folder made by another problem."""
    target_dir.mkdir(parents=True, exist_ok=True)
    owner_file = target_dir / "problem.json"
    if owner_file.is_file():
        made_by = owner(target_dir)
        if made_by != problem:
            raise UserError(f"target_dir {target_dir} was made by problem '{made_by}', not "
                            f"'{problem}'; choose another target_dir")
        return
    owner_file.write_text(json.dumps({"problem": problem}) + "\n")


def owner(target_dir: Path) -> str:
    """The problem (``module:Class``) that made target_dir; an error if it is not one."""
    owner_file = Path(target_dir) / "problem.json"
    if not owner_file.is_file():
        raise UserError(f"{target_dir} is not a target_dir of this framework (no problem.json)")
    return json.loads(owner_file.read_text()).get("problem")


def record_invocation(target_dir: Path, config) -> Path:
    """Save the resolved config, the command line and package versions under runs/<time>/."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = target_dir / "runs" / stamp
    folder.mkdir(parents=True)
    save_yaml(config, folder / "config.yaml")
    save_yaml(config, target_dir / "config.yaml")
    (folder / "command.txt").write_text(shlex.join([sys.executable, *sys.argv]) + "\n")
    (folder / "environment.json").write_text(json.dumps(environment(), indent=2) + "\n")
    return folder


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": versions}


def setup_logging(target_dir: Path | None, verbose: bool = True, rank: int | None = None) -> None:
    """Concise console log plus ``<target_dir>/log.txt``; replaces handlers of earlier runs.

    ``rank`` (distributed runs): ranks other than 0 write no file and only warnings, tagged.
    """
    handlers = [BarSafeHandler(sys.stderr)] if verbose else []
    if target_dir is not None:
        handlers.append(logging.FileHandler(target_dir / "log.txt"))
    tag = f"[rank {rank}] " if rank is not None else ""
    for handler in handlers:
        handler.setFormatter(logging.Formatter(tag + LOG_FORMAT, "%H:%M:%S"))
        handler._framework = True
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if not rank else logging.WARNING)
        for handler in list(logger.handlers):
            if getattr(handler, "_framework", False):
                logger.removeHandler(handler)
                handler.close()
        for handler in handlers:
            logger.addHandler(handler)
        logger.propagate = False
