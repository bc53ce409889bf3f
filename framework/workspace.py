"""A target_dir: who owns it, who is running in it, its log, and a record of every invocation.

Nothing here writes before :func:`check_target_dir` has passed, so a rejected command leaves
target_dir as it was.
"""
from __future__ import annotations

import datetime
import fcntl
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from framework.config import save_yaml
from framework.errors import UserError
from framework.files import existing_parent, read_json
from framework.progress import BarSafeHandler

PACKAGES = ("speech-recipes", "torch", "torchaudio", "numpy", "omegaconf", "pandas",
            "scikit-learn", "soundfile", "tqdm", "matplotlib", "tensorboard")
LOGGERS = ("framework", "corpora")  # the loggers a run's console and log.txt show
LOG_FORMAT = "%(asctime)s %(levelname).1s %(message)s"


def check_target_dir(target_dir: Path, problem: str) -> None:
    """Read-only checks: target_dir can be a folder of ``problem``'s that we may write."""
    if target_dir.exists() and not target_dir.is_dir():
        raise UserError(f"target_dir {target_dir} is a file, not a folder; choose another "
                        "target_dir")
    existing = existing_parent(target_dir)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"target_dir {target_dir}: {existing} is not writable by this user; "
                        "choose another target_dir or fix its permissions")
    if (target_dir / "problem.json").is_file():
        made_by = owner(target_dir)
        if made_by != problem:
            raise UserError(f"target_dir {target_dir} was made by problem '{made_by}', not "
                            f"'{problem}'; choose another target_dir")


def claim(target_dir: Path, problem: str) -> None:
    """Mark target_dir as ``problem``'s (after :func:`check_target_dir`)."""
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"target_dir {target_dir} cannot be created: {err.strerror}") from err
    owner_file = target_dir / "problem.json"
    if not owner_file.is_file():
        owner_file.write_text(json.dumps({"problem": problem}) + "\n")


def owner(target_dir: Path) -> str:
    """The problem (``module:Class``) that made target_dir; an error if it is not one."""
    owner_file = Path(target_dir) / "problem.json"
    if not owner_file.is_file():
        raise UserError(f"{target_dir} is not a target_dir of this framework (no problem.json)")
    return read_json(owner_file, "the target_dir's owner record").get("problem")


class TargetLock:
    """One invocation at a time per target_dir: an exclusive ``flock`` on ``<target_dir>/
    .lock``, held until :meth:`release`. The kernel drops the lock when its process dies, so
    the lock of a killed run is simply taken over (the file still names the dead process).
    Only rank 0 of a distributed run takes it; it stands for every rank."""

    def __init__(self, target_dir: Path):
        self.path = Path(target_dir) / ".lock"
        self.fd: int | None = None
        self.stale: str = ""  # who held the lock before, when that run died holding it

    def acquire(self) -> "TargetLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path.parent} is in use by another run ({holder}); wait "
                            "for it to finish, stop it, or choose another target_dir") from None
        self.stale = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        mine = f"pid {os.getpid()} on {socket.gethostname()} since " \
               f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}: {command_line()}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine.encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # kept, not unlinked: a waiter may hold its inode
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_LEFTOVER = re.compile(r"^\..+\.tmp(?P<pid>\d+)$")


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete ``.<name>.tmp<pid>`` files and folders (half-done atomic writes) under
    ``folder`` whose process is gone; return what was removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            match = _LEFTOVER.match(name)
            if match and not pid_alive(int(match["pid"])):
                path = Path(root) / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() \
                    else path.unlink(missing_ok=True)
                removed.append(path)
        dirs[:] = [d for d in dirs if not _LEFTOVER.match(d)]
    return removed


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def version_line() -> str:
    """``speech-recipes 0.1.0 (git 1a2b3c4, modified)``: the code this run used."""
    try:
        version = importlib.metadata.version("speech-recipes")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    source = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.SubprocessError):
        return f"speech-recipes {version}"
    if head.returncode:
        return f"speech-recipes {version}"
    state = ", modified" if dirty.stdout.strip() else ""
    return f"speech-recipes {version} (git {head.stdout.strip()}{state})"


def log_header(log: logging.Logger) -> None:
    """The line each invocation's log opens with: time, command and code version."""
    log.info("==== %s  %s  [%s]", datetime.datetime.now().isoformat(sep=" ", timespec="seconds"),
             command_line(), version_line())


def command_line() -> str:
    """This process's command, as typed (``python -m framework run ...``)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).parts[-2:] == ("framework", "__main__.py"):
        argv[0] = "python -m framework"
        return f"{argv[0]} {shlex.join(argv[1:])}"
    return shlex.join(argv)


def log_to_file(target_dir: Path, message: str, level: int = logging.ERROR) -> None:
    """Write ``message`` to target_dir's log.txt only, if this process logs there (the
    console shows it already, as the CLI's error)."""
    logger = logging.getLogger(LOGGERS[0])
    record = logger.makeRecord(logger.name, level, __file__, 0, message, None, None)
    log_file = str(Path(target_dir) / "log.txt")
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename == log_file:
            handler.handle(record)


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
