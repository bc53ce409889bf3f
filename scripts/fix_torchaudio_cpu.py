"""Make ``import torchaudio`` work beside a CPU-only torch, and say so.

PyPI's torchaudio 2.11 wheel ships native libraries (``torchaudio/lib/*.so``) built against
CUDA. Next to a CPU build of torch they fail to load, and because ``torchaudio/__init__``
loads them eagerly, the whole package fails to import. The project only uses torchaudio's
pure-Python parts (``transforms``, ``functional``, ``compliance.kaldi``); audio files are
read with soundfile. torchaudio skips its extension when the library files are absent, so we
move them into ``lib/_disabled_cuda_libs/`` (kept, not deleted: moving them back undoes it).

The script acts only when all of these hold, and otherwise changes nothing:
  * it runs inside a virtual environment (never touches a system or user site-packages);
  * torch is a CPU build (``torch.version.cuda is None``);
  * ``import torchaudio`` fails with torchaudio's "Could not load this library" error.
It then re-checks the import in a fresh interpreter and restores the files if that fails.
Exit status 0 when torchaudio imports at the end, 1 otherwise.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

DISABLED_DIR = "_disabled_cuda_libs"


def _import_error() -> str | None:
    """Try ``import torchaudio`` in a fresh interpreter; return its stderr on failure."""
    proc = subprocess.run([sys.executable, "-c", "import torchaudio"],
                          capture_output=True, text=True)
    return None if proc.returncode == 0 else proc.stderr.strip()


def _say(message: str) -> None:
    print(f"[fix_torchaudio_cpu] {message}", flush=True)


def main() -> int:
    error = _import_error()
    if error is None:
        _say("import torchaudio works; nothing to do.")
        return 0
    if sys.prefix == sys.base_prefix:
        _say("import torchaudio fails, but this is not a virtual environment; refusing to "
             "modify it. Run `make setup` (it creates .venv).\n" + error.splitlines()[-1])
        return 1
    import torch

    if torch.version.cuda is not None or "Could not load this library" not in error:
        _say("import torchaudio fails for a reason this script does not fix:\n" + error)
        return 1
    lib_dir = Path(importlib.util.find_spec("torchaudio").submodule_search_locations[0]) / "lib"
    moved = _disable_native_libs(lib_dir)
    error = _import_error()
    if error is not None:
        _restore(lib_dir, moved)
        _say("still failing after disabling the native libraries; restored them.\n" + error)
        return 1
    _say(f"torch {torch.__version__} is a CPU build and torchaudio's native libraries are "
         f"CUDA-built, so they cannot load. Moved {len(moved)} file(s) to "
         f"{lib_dir / DISABLED_DIR}. torchaudio now imports; its pure-Python transforms "
         "work, its native ops (e.g. forced alignment) do not. Undo: move them back.")
    return 0


def _disable_native_libs(lib_dir: Path) -> list[Path]:
    target = lib_dir / DISABLED_DIR
    target.mkdir(exist_ok=True)
    moved = []
    for lib in sorted(lib_dir.glob("*.so")):
        shutil.move(str(lib), target / lib.name)
        moved.append(lib)
    (target / "README.txt").write_text(
        "Moved here by scripts/fix_torchaudio_cpu.py: CUDA-built torchaudio libraries that "
        "cannot load with a CPU-only torch. Move them back to ../ to undo.\n")
    return moved


def _restore(lib_dir: Path, moved: list[Path]) -> None:
    for lib in moved:
        shutil.move(str(lib_dir / DISABLED_DIR / lib.name), lib)


if __name__ == "__main__":
    sys.exit(main())
