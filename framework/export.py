"""``export``: a trained model as one TorchScript or ONNX file, checked against the framework.

The file holds the whole model (front end, upstream, featurizer, head) as one function of
two tensors, ``model(wav, wav_len)``:

* ``wav`` float32 (B, T): mono waveforms at the checkpoint's sample rate, zero-padded to the
  longest; ``wav_len`` int64 (B,): each row's valid samples.
* the output float32: (B, classes) logits in the order of the sidecar's ``labels``
  (classification; softmax gives ``predictions.csv``'s scores) or (B, E) speaker embeddings
  (speaker verification; two clips are scored by the cosine of theirs).

Beside it a JSON sidecar (``<file>.json``) says what the file expects and means: problem,
labels, sample rate, inputs and outputs (names, shapes, dtypes), checkpoint and step, the
framework's version, and the check below.

The graph is made from one example batch, so every choice the model makes from a shape (pad
a clip shorter than the FFT window, say) is fixed at the example's. The exported model
therefore appends zeros to every batch, as many as the shortest input its pieces take
without padding it themselves (:func:`shortest_input`): every clip then takes the long-clip
path, and the padding contract (samples past ``wav_len`` never change an output)
keeps the outputs those of the clip alone.

Each export checks itself before it is kept: the written file is loaded back
(``torch.jit.load`` / onnxruntime) and run on one padded batch of test clips of different
lengths (one shorter than any FFT window), and each row is compared with the framework's
output for that clip alone (the checkpoint loaded through :mod:`framework.inference`). A
difference above :data:`TOLERANCE` is an error and the file is not kept. A piece that cannot
be exported is named in a one-line error with the workaround.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framework.audio.dataset import collate_padded, read_manifest
from framework.audio.io import read_audio
from framework.errors import UserError
from framework.files import atomic_path, atomic_write_text
from framework.inference import TrainedModels, named_checkpoint
from framework.tasks.verification import SpeakerVerificationTask

FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
#: accepted max |exported - framework|, relative to max(1, the largest |framework output|)
TOLERANCE = 1e-4
CHECK_CLIPS = 4  # test clips in the check
PIECES = {"upstream": "build_upstream", "featurizer": "build_featurizer",
          "downstream": "build_downstream"}


class WaveformModel(nn.Module):
    """The trained model as ``forward(wav (B, T) float, wav_len (B,) long) → output``, with
    ``pad`` zero samples appended to ``wav`` (the lengths keep them out of every output).
    ``names``: piece → what the config calls it, for errors."""

    def __init__(self, model: nn.Module, pad: int, names: dict[str, str]):
        super().__init__()
        self.model, self.pad, self.names = model, pad, names

    def forward(self, wav: torch.Tensor, wav_len: torch.Tensor) -> torch.Tensor:
        return self.model({"wav": F.pad(wav, (0, self.pad)), "wav_len": wav_len})


def export_model(problem, fmt: str, checkpoint: str = "valid_best",
                 out_dir: str | Path | None = None) -> dict:
    """Write ``problem``'s (attached, on CPU) checkpoint as ``fmt`` into ``out_dir`` (default
    ``target_dir/export/<checkpoint>``), check it, write its sidecar; → the sidecar's dict
    plus ``path`` and ``sidecar``."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()
    name, ckpt = named_checkpoint(problem, checkpoint)
    task, state, trained = TrainedModels(problem).load(ckpt)
    rate = int(state["sample_rate"])
    names = {"upstream": f"build_upstream.name={trained.build_upstream.name}",
             "featurizer": "build_featurizer", "downstream":
             f"build_downstream.name={trained.build_downstream.name}"}
    module = WaveformModel(task.model, shortest_input(task.model), names).eval()
    clips = check_clips(problem, rate)
    folder = Path(out_dir) if out_dir else problem.target_dir / "export" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FORMATS[fmt]
    with atomic_path(path) as tmp:
        notes = WRITERS[fmt](module, example_batch(rate), tmp)
        check = check_file(fmt, tmp, module, clips, notes)
    sidecar = describe(problem, task, state, trained, fmt, path, name, ckpt, check)
    atomic_write_text(path.with_name(path.name + ".json"), json.dumps(sidecar, indent=1))
    return {**sidecar, "path": str(path), "sidecar": str(path) + ".json"}


def require_onnx() -> None:
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if not importable(m)]
    if missing:
        raise UserError(f"--format onnx needs {', '.join(missing)}: pip install "
                        "'speech-recipes[export]' (or use --format torchscript)")


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def shortest_input(model) -> int:
    """Samples below which a piece pads its input itself (a shape-dependent choice): the
    upstream's window (``n_fft`` or ``receptive_field``) plus the head's shortest input in
    frames (``min_samples`` or ``receptive_field``) at the featurizer's stride."""
    head = model.downstream
    frames = max(getattr(head, "min_samples", 1), getattr(head, "receptive_field", 1))
    window = getattr(model.upstream, "n_fft", None) or getattr(model.upstream,
                                                              "receptive_field", 1)
    return (frames - 1) * model.featurizer.downsample_rate + window


def example_batch(rate: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch the graph is made from: two rows of 0.77 s of noise, one of them half valid
    (an unusual length: a value the trace fixed shows as a difference on the check's clips)."""
    samples = int(0.77 * rate)
    wav = torch.randn(2, samples, generator=torch.Generator().manual_seed(0)) * 0.1
    return wav, torch.tensor([samples, samples // 2])


# -- writing ---------------------------------------------------------------------------------

def write_torchscript(module: WaveformModel, example, path: Path) -> list[tuple]:
    """Trace ``module`` on ``example`` into ``path``; → ``(piece, "file:line")`` of each place
    the trace turned a tensor into a Python value (fixed for every input), for the check."""
    with traced_values(module) as notes:
        try:
            traced = torch.jit.trace(module, example, check_trace=False)
        except Exception as err:
            raise unexportable(module, err, "torchscript") from err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is, in torch 2.13
        torch.jit.save(traced, str(path))
    return notes


def write_onnx(module: WaveformModel, example, path: Path) -> list[tuple]:
    """Export ``module`` through torch.export with a dynamic batch and length into ``path``
    (weights inside the file). The exporter's progress lines and dumps are not shown."""
    batch, samples = torch.export.Dim("batch", min=1), torch.export.Dim("samples", min=1)
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.fx", "torch.export",
                                                    "torch._export")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, dynamo=True, verbose=False, input_names=["wav", "wav_len"],
                output_names=["output"], dynamic_shapes={"wav": {0: batch, 1: samples},
                                                         "wav_len": {0: batch}})
    except Exception as err:
        raise unexportable(module, err, "onnx") from err
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
    program.save(str(path), external_data=False)
    return []


WRITERS = {"torchscript": write_torchscript, "onnx": write_onnx}


# -- naming the piece that cannot export -----------------------------------------------------

def blame(frames, module: WaveformModel) -> tuple[str | None, str | None]:
    """``(piece, "file:line")`` for ``frames`` (``(frame, line)`` pairs, innermost first):
    the piece (upstream, featurizer, downstream) whose module's code runs in the innermost
    frame owned by one, and the innermost such frame outside torch's own code (the line to
    read); ``(None, None)`` when no frame is a piece's."""
    owner = {id(m): piece for piece in PIECES for m in getattr(module.model, piece).modules()}
    owned = [(owner[id(f.f_locals.get("self"))], f, line) for f, line in frames
             if id(f.f_locals.get("self")) in owner]
    if not owned:
        return None, None
    torch_dir = str(Path(torch.__file__).parent)
    _, frame, line = next((o for o in owned if not o[1].f_code.co_filename.startswith(
        torch_dir)), owned[0])
    return owned[0][0], f"{Path(frame.f_code.co_filename).name}:{line}"


def error_frames(err: BaseException):
    """``(frame, line)`` of ``err``'s tracebacks, innermost first, its causes' first."""
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for cause in reversed(chain):
        frames, tb = [], cause.__traceback__
        while tb is not None:
            frames.append((tb.tb_frame, tb.tb_lineno))
            tb = tb.tb_next
        yield from reversed(frames)


def named(module: WaveformModel, piece: str | None) -> str:
    return f"the {piece} ({module.names[piece]})" if piece else "the model"


def unexportable(module: WaveformModel, err: BaseException, fmt: str) -> UserError:
    """One line naming the piece ``err`` came from, the cause, and what to do instead."""
    piece, where = blame(error_frames(err), module)
    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    at = f" (at {where})" if where else ""
    return UserError(f"{named(module, piece)} cannot be exported to {fmt}: {summary_line(root)}"
                     f"{at}; workaround: {workaround(fmt, piece)}")


def workaround(fmt: str, piece: str | None) -> str:
    other = f"try --format {'onnx' if fmt == 'torchscript' else 'torchscript'}"
    if piece == "upstream":
        return f"another upstream (fbank, mel and mfcc export to both formats), or {other}"
    return f"another {piece or 'upstream or downstream'}, or {other}"


@contextlib.contextmanager
def traced_values(module: WaveformModel):
    """Collect ``(piece, "file:line")`` for each TracerWarning raised in the block: where a
    trace of ``module`` turned a tensor into a Python value, fixed for every input."""
    notes: list[tuple] = []
    shown = warnings.showwarning

    def note(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, torch.jit.TracerWarning):
            piece, _ = blame(((f, f.f_lineno) for f in stack(sys._getframe(1))), module)
            entry = (piece, f"{Path(filename).name}:{lineno}")
            if entry not in notes:
                notes.append(entry)

    with warnings.catch_warnings():
        warnings.simplefilter("always", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # torch.jit.trace's own
        warnings.showwarning = note
        try:
            yield notes
        finally:
            warnings.showwarning = shown


def stack(frame):
    while frame is not None:
        yield frame
        frame = frame.f_back


def summary_line(err: BaseException) -> str:
    """One line of ``err``'s message: the first, or the last for the TorchScript
    interpreter's (its first line only says that an operation failed)."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).splitlines()
             if ln.strip()]
    if not lines:
        return type(err).__name__
    return (lines[-1] if "TorchScript interpreter" in lines[0] else lines[0])[:300]


# -- the check -------------------------------------------------------------------------------

def check_clips(problem, rate: int) -> list[dict]:
    """``[{"id", "wav"}]``: the first :data:`CHECK_CLIPS` utterances of the test manifest
    (``test``, or a test trial list's ``<list>_utts``; else valid), the second cut to 60 %,
    the third to 20 ms (shorter than an FFT window)."""
    csvs = problem.manifests()
    tests = [s for s in csvs if s == "test" or s.endswith("_utts") and s != "valid_utts"]
    split = next((s for s in (*tests, "valid_utts", "valid") if s in csvs), None)
    if split is None:
        raise UserError(f"{problem.target_dir}: no test or valid manifest to check the "
                        "export on; run stage 0 (start=prepare_data)")
    clips = []
    for index, row in enumerate(read_manifest(csvs[split]).head(CHECK_CLIPS).to_dict("records")):
        wav = read_audio(row["wav_path"], row.get("start"), row.get("end"), rate)
        keep = {1: int(0.6 * len(wav)), 2: int(0.02 * rate)}.get(index, len(wav))
        clips.append({"id": row["id"], "wav": wav[:max(1, keep)]})
    return clips


def check_file(fmt: str, path: Path, module: WaveformModel, clips: list[dict],
               notes: list[tuple]) -> dict:
    """Run the file at ``path`` on ``clips`` (one padded batch, then each clip alone) and
    compare every output with the framework's model on that clip alone; → the check's
    record for the sidecar. A run that fails or differs by more than the tolerance is a
    :class:`UserError` naming the pieces in ``notes`` (what the trace fixed)."""
    want = reference(module.model, clips)
    try:
        got = outputs(RUNNERS[fmt](path), clips)
    except Exception as err:
        raise UserError(f"the exported {fmt} model fails on the check's clips: "
                        f"{summary_line(err)}{because(module, fmt, notes)}") from err
    want = np.concatenate([want, want])
    if got.shape != want.shape:
        raise UserError(f"the exported {fmt} model gives outputs of shape {got.shape[1:]}, "
                        f"the framework {want.shape[1:]}{because(module, fmt, notes)}")
    diff = np.abs(got - want).reshape(len(got), -1).max(axis=1)
    tolerance = TOLERANCE * max(1.0, float(np.abs(want).max()))
    if not diff.max() <= tolerance:  # NaN fails too
        worst = int(np.nanargmax(diff)) if not np.isnan(diff).all() else 0
        clip, how = clips[worst % len(clips)], "alone" if worst >= len(clips) else "in a batch"
        raise UserError(f"the exported {fmt} model differs from the framework by "
                        f"{diff.max():.3g} (tolerance {tolerance:.3g}) on clip {clip['id']} "
                        f"of {len(clip['wav'])} samples {how}{because(module, fmt, notes)}")
    return {"clips": [{"id": c["id"], "samples": len(c["wav"])} for c in clips],
            "runs": "one zero-padded batch of all clips, then each clip alone",
            "max_abs_diff": float(diff.max()), "tolerance": tolerance,
            "tolerance_rule": f"{TOLERANCE:g} x max(1, largest |framework output|)"}


def outputs(run, clips: list[dict]) -> np.ndarray:
    """``run(wav, wav_len)`` on the padded batch of ``clips``, then on each clip alone →
    (2N, ...) float32 rows."""
    batch = collate_padded(clips)
    rows = [run(batch["wav"].numpy(), batch["wav_len"].numpy())]
    rows += [run(c["wav"][None].numpy(), np.array([len(c["wav"])])) for c in clips]
    return np.concatenate(rows).astype(np.float32)


def because(module: WaveformModel, fmt: str, notes: list[tuple]) -> str:
    """The rest of a failed check's line: what the trace fixed, where, and what to do."""
    suspects = [(piece, where) for piece, where in notes if piece] or notes
    if not suspects:
        return f"; it was not kept; workaround: {workaround(fmt, None)}"
    places = ", ".join(f"{named(module, piece)} at {where}" for piece, where in suspects[:3])
    return (f"; the trace fixed values computed from the input in {places}; it was not "
            f"kept; workaround: {workaround(fmt, suspects[0][0])}")


@torch.no_grad()
def reference(model, clips: list[dict]) -> np.ndarray:
    """The framework's output for each clip alone (one unpadded batch of one) → (N, ...)."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    rows = [model({"wav": c["wav"][None].to(device),
                   "wav_len": torch.tensor([len(c["wav"])], device=device)})[0]
            for c in clips]
    return torch.stack(rows).float().cpu().numpy()


def run_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = torch.jit.load(str(path), map_location="cpu")

    @torch.no_grad()
    def run(wav: np.ndarray, lens: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(wav), torch.from_numpy(lens)).numpy()
    return run


def run_onnx(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda wav, lens: session.run(None, {"wav": wav, "wav_len": lens})[0]


RUNNERS = {"torchscript": run_torchscript, "onnx": run_onnx}


# -- the sidecar -----------------------------------------------------------------------------

def describe(problem, task, state, trained, fmt, path, name, ckpt, check) -> dict:
    """The sidecar: what the file is, expects and gives (JSON-serialisable)."""
    from framework.workspace import version_line

    rate = int(state["sample_rate"])
    return {
        "format": fmt, "file": path.name, "problem": state["problem"],
        "labels": None if is_verification(task) else list(state["labels"]),
        "sample_rate": rate,
        "inputs": [
            {"name": "wav", "dtype": "float32", "shape": ["batch", "samples"],
             "meaning": f"mono waveforms at {rate} Hz, zero-padded to the longest row"},
            {"name": "wav_len", "dtype": "int64", "shape": ["batch"],
             "meaning": "valid samples of each row (padding past it changes nothing)"}],
        "outputs": [output_spec(problem, task, state, name)],
        "checkpoint": {"name": name, "file": str(Path(ckpt).resolve()),
                       "step": state["progress"]["step"]},
        "upstream": trained.build_upstream.name, "downstream": trained.build_downstream.name,
        "appended_zeros": shortest_input(task.model),
        "check": check,
        "framework_version": version_line(), "torch_version": torch.__version__,
        **format_versions(fmt, path),
    }


def is_verification(task) -> bool:
    return isinstance(task, SpeakerVerificationTask)


def output_spec(problem, task, state, name: str) -> dict:
    size = task.model.downstream.output_size
    if not is_verification(task):
        return {"name": "output", "dtype": "float32", "shape": ["batch", size],
                "meaning": "class logits in the order of labels (softmax: the scores of "
                           "predictions.csv)"}
    return {"name": "output", "dtype": "float32", "shape": ["batch", size],
            "meaning": "speaker embeddings; score two clips by the cosine of theirs (the "
                       "framework's evaluation embeds windows of build_dataset.test.chunk_secs "
                       "and averages them)",
            "cosine_threshold": cosine_threshold(problem, name)}


def cosine_threshold(problem, name: str) -> float | None:
    """The validation-EER cosine threshold of checkpoint ``name`` (None: not evaluated)."""
    try:
        return float(problem.validation_record(name)["metrics"]["cosine_eer_threshold"])
    except (UserError, KeyError, AttributeError):
        return None


def format_versions(fmt: str, path: Path) -> dict:
    if fmt != "onnx":
        return {}
    import onnx
    import onnxruntime

    opsets = {o.domain or "ai.onnx": o.version
              for o in onnx.load(str(path), load_external_data=False).opset_import}
    return {"onnx_opset": opsets.get("ai.onnx"), "onnxruntime_version": onnxruntime.__version__}


# -- the command -----------------------------------------------------------------------------

def summary(result: dict) -> str:
    """What ``python -m framework export`` prints (three lines)."""
    check = result["check"]
    sizes = [c["samples"] for c in check["clips"]]
    out = result["outputs"][0]
    return (f"exported {result['path']} ({result['format']}, checkpoint "
            f"{result['checkpoint']['name']} step {result['checkpoint']['step']}; output "
            f"{out['shape']})\n"
            f"check: {len(sizes)} test clips of {min(sizes)}-{max(sizes)} samples (one padded "
            f"batch, then each alone), max abs difference from the framework "
            f"{check['max_abs_diff']:.3g} (tolerance {check['tolerance']:.3g})\n"
            f"sidecar: {result['sidecar']}")
