"""The stage machine shared by every problem: 0 prepare_data → … → 4 report.

Each finished stage leaves ``<target_dir>/stages/<n>-<name>.json``::

    {"stage": "train", "fingerprint": "…", "after": {"build_encoder": "<its fingerprint>"},
     "inputs": {"/abs/file": "<digest>"}, "outputs": {"key": "relative/or/absolute path"},
     "sections": {<the config sections the stage used>}, "finished": "<ISO time>"}

A stage's fingerprint hashes the config sections it reads, the digests of the input files it
named (a folder's digest covers its whole listing: :func:`listing_digest`; stage 0's inputs are
the paths its ``prepare_data`` section names, :func:`corpus_inputs`), and the fingerprints of
the stages before it. A stage whose recorded fingerprint equals today's, and whose outputs
exist, is skipped; otherwise the log says why it reruns (which input or section changed).
Because fingerprints chain, rerunning a stage with a changed section makes every later stage
stale. Stages before ``start`` are not rerun: they must have records that are consistent with
each other (later stages use their outputs).
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
from framework.files import atomic_write_text, read_json

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
    """Content hash of a small file, size+mtime of a large one, the listing of a folder
    (:func:`listing_digest`), 'missing' if absent."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        return listing_digest(path)
    stat = path.stat()
    if stat.st_size > SMALL_FILE:
        return f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def listing_digest(folder: str | Path) -> str:
    """``listing:<entries>:<hash>`` of everything under ``folder``: the real path it resolves
    to (so a re-pointed symlink differs) and, per entry in sorted order, its relative path,
    size and mtime (ns); a symlink adds its target, a dangling one says so. Files are never
    opened (a FIFO cannot block this). Symlinked folders are followed once each.

    Cost: one ``stat`` per entry, no reads. Measured on the shared 2-core machine (load ~4)
    over a fake tree of 100,000 empty files in 1,000 folders, warm cache: 0.8 s per digest
    (scandir alone: 0.13 s; with one stat per entry: 0.6 s). A record keeps one digest per input.
    """
    real = os.path.realpath(folder)
    hasher = hashlib.sha256(real.encode("utf-8", "surrogateescape"))
    root = os.stat(real)
    count, pending, visited = 0, [""], {(root.st_dev, root.st_ino)}
    while pending:
        relative = pending.pop()
        lines, subfolders = _list_folder(os.path.join(real, relative), relative, visited)
        count += len(lines)
        hasher.update("\n".join(lines).encode("utf-8", "surrogateescape") + b"\n")
        pending.extend(reversed(subfolders))
    return f"listing:{count}:{hasher.hexdigest()[:16]}"


def _list_folder(path: str, relative: str, visited: set) -> tuple[list[str], list[str]]:
    """One line per entry of the folder ``path`` (sorted), and its subfolders to descend into
    (relative paths; a folder reached again through a symlink is listed, not descended)."""
    try:
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as err:
        return [f"{relative}\tunreadable folder: {err.strerror}"], []
    prefix = relative + "/" if relative else ""
    lines, subfolders = [], []
    for entry in entries:
        name = prefix + entry.name
        if entry.is_symlink():
            name += "\t-> " + os.readlink(entry.path)
        try:
            info = entry.stat()
        except OSError:
            lines.append(name + "\tdangling")
            continue
        if not entry.is_dir():
            lines.append(f"{name}\t{info.st_size}\t{info.st_mtime_ns}")
            continue
        lines.append(name + "/")
        if (info.st_dev, info.st_ino) not in visited:
            visited.add((info.st_dev, info.st_ino))
            subfolders.append(prefix + entry.name)
    return lines, subfolders


def corpus_inputs(prepare_data: dict) -> list[str]:
    """The files and folders stage 0 read, named by its ``prepare_data`` section: every
    string value (also inside lists and mappings) that names an existing path, as an
    absolute path (``~`` expanded, symlinks kept: their target is part of the digest).
    Their digests go into stage 0's fingerprint.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     found = corpus_inputs({"dataset_root": root, "classes": "superb12", "n": 3,
    ...                            "lists": [root + "/nothing.txt", root]})
    ...     found == [root]
    True
    """
    found: list[str] = []

    def visit(value) -> None:
        if isinstance(value, str):
            path = os.path.expanduser(value)
            if value and os.path.exists(path):
                found.append(os.path.abspath(path))
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(prepare_data)
    return sorted(set(found))


def input_digests(inputs) -> dict[str, str]:
    """``{path: file_digest(path)}`` in sorted order (what a record's ``inputs`` holds)."""
    return {path: file_digest(path) for path in sorted(inputs)}


def describe_change(old: str | None, new: str) -> str:
    """What differs between two digests of one input, for the log."""
    if old is None:
        return "is a new input"
    if new == "missing":
        return "is gone"
    if old.startswith("listing:") and new.startswith("listing:"):
        before, after = int(old.split(":")[1]), int(new.split(":")[1])
        if before != after:
            return f"changed: {before} entries then, {after} now"
        return ("changed: as many entries, but names, sizes, modification times or the "
                "folder it resolves to differ")
    return "changed"


def as_json(obj: Any) -> Any:
    """``obj`` as it reads back from a record (tuples become lists, paths strings)."""
    return json.loads(json.dumps(obj, default=str))


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
        return read_json(path, f"stage {stage}'s record") if path.is_file() else None

    def previous_fingerprint(self, stage: str) -> str | None:
        previous = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
        return (self.read(previous) or {}).get("fingerprint") if previous else None

    def fingerprint(self, stage: str, sections: dict, inputs: list[str]) -> str:
        """What the record of ``stage`` would hold as its fingerprint today."""
        return self.fingerprint_of(stage, sections,
                                   input_digests(self.inputs_of(stage, sections, inputs)))

    def fingerprint_of(self, stage: str, sections: dict, digests: dict[str, str]) -> str:
        return digest({"sections": sections, "after": self.previous_fingerprint(stage),
                       "inputs": digests})

    def is_current(self, stage: str, sections: dict) -> bool:
        """True when the record matches today's sections, inputs and earlier stages; when it
        does not, the log says what changed."""
        record = self.read(stage)
        if record is None:
            return False
        changes = self.changes(stage, sections, record)
        if changes:
            log.info("stage %d %s: rerun: %s", STAGES.index(stage), stage, "; ".join(changes))
        return not changes

    @staticmethod
    def inputs_of(stage: str, sections: dict, named) -> list[str]:
        """The inputs of a stage: those it ``named``, plus for stage 0 the paths today's
        ``prepare_data`` section names (so a relative root read from another folder, or a
        path that did not exist at the last run, counts too, whatever the stage reported)."""
        inputs = set(named)
        if stage == STAGES[0]:
            inputs |= set(corpus_inputs(sections.get("prepare_data") or {}))
        return sorted(inputs)

    def changes(self, stage: str, sections: dict, record: dict) -> list[str]:
        """Why ``record`` is not today's result (empty: it is)."""
        recorded = record.get("inputs", {})
        today = input_digests(self.inputs_of(stage, sections, recorded))
        if record["fingerprint"] == self.fingerprint_of(stage, sections, today):
            return [] if self.outputs_exist(record) else ["some of its outputs are missing"]
        changes = [f"{path} {describe_change(recorded.get(path), new)}"
                   for path, new in today.items() if recorded.get(path) != new]
        old_sections, now = record.get("sections", {}), as_json(sections)
        changes += [f"config section {key} changed" for key in sorted(set(now) | set(old_sections))
                    if now.get(key) != old_sections.get(key)]
        previous = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
        if previous and record.get("after", {}).get(previous) != self.previous_fingerprint(stage):
            changes.append(f"stage {previous} reran since")
        return changes or ["its fingerprint differs"]

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
        # once: a corpus listing is the costly part
        digests = input_digests(self.inputs_of(stage, sections, result.inputs))
        record = {
            "stage": stage,
            "fingerprint": self.fingerprint_of(stage, sections, digests),
            "after": {previous: self.previous_fingerprint(stage)} if previous else {},
            "inputs": digests,
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


