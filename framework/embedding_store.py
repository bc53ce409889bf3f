"""Embeddings kept on disk under a key: ``embeddings.npy`` (N, E) float32 + ``key.json``.

A store answers only for the key it was written with (checkpoint digest, manifest digest,
settings), so changed weights or files are never served stale. Written to a temporary folder
and renamed: a killed run leaves either a whole store or none. No pickle.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np


class EmbeddingStore:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def load(self, key: dict) -> np.ndarray | None:
        """The stored embeddings if they were written for ``key``, else None."""
        key_file = self.folder / "key.json"
        if not key_file.is_file() or json.loads(key_file.read_text()) != _plain(key):
            return None
        return np.load(self.folder / "embeddings.npy", allow_pickle=False)

    def save(self, key: dict, embeddings: np.ndarray) -> None:
        tmp = self.folder.with_name(f".{self.folder.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.save(tmp / "embeddings.npy", np.asarray(embeddings, dtype=np.float32),
                allow_pickle=False)
        (tmp / "key.json").write_text(json.dumps(_plain(key), indent=1, sort_keys=True))
        shutil.rmtree(self.folder, ignore_errors=True)
        os.replace(tmp, self.folder)


def _plain(key: dict) -> dict:
    """The key as JSON would give it back (tuples become lists, and so on)."""
    return json.loads(json.dumps(key, sort_keys=True))
