"""Label encoders, saved as JSON (never pickle)."""
from __future__ import annotations

import json
from pathlib import Path

from framework.errors import UserError
from framework.files import read_json


class CategoryEncoder:
    """Class names ↔ indices. ``classes`` is the index order (sorted at creation)."""

    def __init__(self, classes: list[str]):
        self.classes = list(classes)
        self.index = {name: i for i, name in enumerate(self.classes)}

    @classmethod
    def from_labels(cls, labels) -> "CategoryEncoder":
        return cls(sorted(set(map(str, labels))))

    def __len__(self) -> int:
        return len(self.classes)

    def encode(self, label: str) -> int:
        if label not in self.index:
            raise UserError(f"label '{label}' is not one of the {len(self)} training "
                            f"labels: {', '.join(self.classes)}")
        return self.index[label]

    def save(self, path: str | Path) -> Path:
        Path(path).write_text(json.dumps({"type": "category", "classes": self.classes},
                                         indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "CategoryEncoder":
        data = read_json(path, "stage 1's label encoder")
        if not isinstance(data, dict) or data.get("type") != "category":
            raise UserError(f"{path} is not a category encoder")
        return cls(data["classes"])
