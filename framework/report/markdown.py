"""Markdown cells shared by the reports: table rows, relative links, numbers, percentages."""
from __future__ import annotations

import os
from pathlib import Path


def md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def link(target, out_dir: Path, text: str | None = None) -> str:
    """A markdown link to ``target`` relative to ``out_dir``, or ``—`` without a target.

    The link text defaults to that relative path, which is what a reader would type.
    """
    if not target:
        return "—"
    try:
        href = Path(os.path.relpath(Path(target), out_dir)).as_posix()
    except ValueError:  # another drive on Windows: keep the absolute path
        href = Path(target).as_posix()
    return f"[{text or href}]({href})"


def num(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def pct(value) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def text(value) -> str:
    return "—" if value is None else str(value)
