"""The stage machine shared by every problem: 0 prepare_data → … → 4 report.

Each finished stage leaves ``<target_dir>/stages/<n>-<name>.json``::

    {"stage": "train", "fingerprint": "…", "after": {"build_encoder": "<its fingerprint>"},
     "inputs": {"/abs/file": "<digest>"}, "outputs": {"key": "relative/or/absolute path"},
     "sections": {<the config sections the stage used>}, "finished": "<ISO time>"}

A stage's fingerprint hashes the config sections it reads, the digests of the input files it
named, and the fingerprints of the stages before it. A stage whose recorded fingerprint equals
today's, and whose outputs exist, is skipped. Because fingerprints chain, rerunning a stage with
a changed section makes every later stage stale. Stages before ``start`` are not rerun: they
must have records that are consistent with each other (later stages use their outputs).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.errors import ConfigError, UserError

STAGES = ("prepare_data", "build_encoder", "train", "evaluate", "report")
SMALL_FILE = 16 * 2**20  # hash content below this size; size + mtime above (checkpoints, audio)

log = logging.getLogger(__name__)


def stage_index(value: int | str | None, default: int) -> int:
    """A stage given as number or name → its number; ``None`` → ``default``."""
    if value is None:
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and 0 <= value < len(STAGES):
        return value
    if value in STAGES:
        return STAGES.index(value)
    choices = ", ".join(f"{i} {name}" for i, name in enumerate(STAGES))
    raise ConfigError(f"unknown stage {value!r}; choose one of: {choices}")


def file_digest(path: str | Path) -> str:
    """Content hash of a small file, size+mtime of a large one, 'missing' if absent."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return "dir:" + str(path.stat().st_mtime_ns)
    stat = path.stat()
    if stat.st_size > SMALL_FILE:
        return f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def corpus_inputs(prepare_data: dict) -> list[str]:
    """The files and folders stage 0 read, named by its ``prepare_data`` section: every
    value that is an existing path. Their digests go into stage 0's fingerprint."""
    return []  # TODO(issue 8 §4): folder listings with sizes and mtimes


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StageResult:
    """What a stage hands back: paths it wrote and files it read (for the fingerprint)."""

    outputs: dict[str, str] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)


class StageBook:
    """Reads and writes the stage records of one target_dir."""

    def __init__(self, target_dir: str | Path):
        self.target_dir = Path(target_dir)
        self.folder = self.target_dir / "stages"

    def path(self, stage: str) -> Path:
        return self.folder / f"{STAGES.index(stage)}-{stage}.json"

    def read(self, stage: str) -> dict | None:
        path = self.path(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def fingerprint(self, stage: str, sections: dict, inputs: list[str]) -> str:
        previous = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
        after = (self.read(previous) or {}).get("fingerprint") if previous else None
        return digest({"sections": sections, "after": after,
                       "inputs": {p: file_digest(p) for p in sorted(inputs)}})

    def is_current(self, stage: str, sections: dict) -> bool:
        """True when the record matches today's sections, inputs and earlier stages."""
        record = self.read(stage)
        if record is None:
            return False
        today = self.fingerprint(stage, sections, list(record.get("inputs", {})))
        return record["fingerprint"] == today and self.outputs_exist(record)

    def outputs_exist(self, record: dict) -> bool:
        return all(self.resolve(p).exists() for p in record.get("outputs", {}).values())

    def relative(self, path: str) -> str:
        """Paths inside target_dir are recorded relative to it, so the folder can move."""
        try:
            return str(Path(path).resolve().relative_to(self.target_dir.resolve()))
        except ValueError:
            return str(path)

    def resolve(self, path: str) -> Path:
        return Path(path) if os.path.isabs(path) else self.target_dir / path

    def write(self, stage: str, sections: dict, result: StageResult) -> dict:
        previous = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
        record = {
            "stage": stage,
            "fingerprint": self.fingerprint(stage, sections, result.inputs),
            "after": {previous: (self.read(previous) or {}).get("fingerprint")} if previous else {},
            "inputs": {p: file_digest(p) for p in sorted(result.inputs)},
            "outputs": {k: self.relative(v) for k, v in result.outputs.items()},
            "sections": sections,
            "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path(stage), json.dumps(record, indent=2, default=str))
        return record

    def require(self, stage: str) -> dict:
        """The record of an earlier stage that a later one needs, consistent with its own past."""
        record = self.read(stage)
        index = STAGES.index(stage)
        if record is None or not self.outputs_exist(record):
            what = "has not run" if record is None else "lost some of its outputs"
            raise UserError(f"stage {index} {stage} {what} in {self.target_dir}; "
                            f"run it first (start={stage}).")
        for previous, fingerprint in record.get("after", {}).items():
            if (self.read(previous) or {}).get("fingerprint") != fingerprint:
                raise UserError(f"stage {index} {stage} is stale: {previous} reran after it. "
                                f"Run from start={stage}.")
        return record

    def stale_after(self, stage: str) -> list[str]:
        """Later stages whose records no longer chain to the current records."""
        stale = []
        for later in STAGES[STAGES.index(stage) + 1:]:
            record = self.read(later)
            if record is None:
                continue
            previous = STAGES[STAGES.index(later) - 1]
            current = (self.read(previous) or {}).get("fingerprint")
            if stale or record.get("after", {}).get(previous) != current:
                stale.append(later)
        return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
