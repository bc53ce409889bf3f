"""Classify audio with a trained classification run: the ``predict`` command's Python API.

A :class:`Predictor` loads one checkpoint of a target_dir once (through
:class:`framework.inference.TrainedModels`) and classifies files or in-memory waveforms:

>>> predictor = Predictor.open("exp/kws")                       # doctest: +SKIP
>>> predictor.predict("yes.wav", top_k=2)                       # doctest: +SKIP
[{'label': 'yes', 'score': 0.97}, {'label': 'no', 'score': 0.01}]
>>> predictor.predict((waveform, 8000))                         # doctest: +SKIP

The top-k list is shaped like the Hugging Face audio-classification pipeline's output:
softmax scores, descending. Every input is resampled to the model's rate and evaluated as
the windowed evaluation does (:mod:`framework.audio.segments` windows, batched, their logits
averaged per clip by the task), with the trained config's ``build_dataset.test.window_secs``
or, when it has none, :func:`default_window_secs`. So memory for the model depends on the
window and batch size, not on the clip length; the waveform itself is held in memory
(4 bytes per sample at the model's rate).

A Predictor is safe to share between threads: inputs are read and resampled concurrently,
the model runs one batch loop at a time (a lock).
"""
from __future__ import annotations

import csv
import json
import sys
import threading
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np
import torch
import torchaudio.functional as AF
from torch.utils.data import DataLoader

from framework.audio.io import inspect_audio, read_audio
from framework.audio.segments import WindowDataset, collate_windows
from framework.distributed import Distributed
from framework.errors import AudioError, UserError
from framework.files import atomic_path
from framework.inference import Evaluator, TrainedModels, named_checkpoint
from framework.progress import progress

#: a file path, or a waveform with its sample rate: ``(array (T,) or (T, channels), Hz)``
Audio = Union[str, Path, tuple]

#: window (seconds) when the trained config names none at all (no window, no crop)
FALLBACK_WINDOW_SECS = 10.0


class Prediction(NamedTuple):
    """One input's outcome: ``source`` (the path as given, or ``<array N>``: input number
    N), ``top`` (the
    top-k ``[{"label", "score"}]``, scores descending) or ``error`` (one line)."""

    source: str
    top: list[dict] | None
    error: str | None = None


class Predictor:
    """One checkpoint of a classification target_dir, loaded once (see the module doc)."""

    def __init__(self, problem, checkpoint: str = "valid_best"):
        """``problem``: attached to its target_dir (:meth:`Problem.attach`); ``checkpoint``:
        ``valid_best``, ``step-N`` or a checkpoint file (:func:`~framework.inference.named_checkpoint`)."""
        require_classification(problem, "predict")
        _, self.checkpoint = named_checkpoint(problem, checkpoint)
        self.task, self.state, self.config = TrainedModels(problem).load(self.checkpoint)
        self.device = problem.device
        self.labels = list(self.task.classes)
        self.sample_rate = int(self.config.build_dataset.sample_rate)
        self.window_secs = default_window_secs(self.config)
        self.batch_size = int(self.config.build_batch_sampler.test.batch_size)
        self.lock = threading.Lock()

    @classmethod
    def open(cls, target_dir, checkpoint: str = "valid_best", device: str = "cpu",
             problem: str | None = None) -> "Predictor":
        """A Predictor for ``target_dir``'s problem (``problem``: ``module:Class`` of an
        unregistered one, as ``--problem`` on the command line)."""
        from framework.problems import attached_problem

        return cls(attached_problem(str(target_dir), problem, device), checkpoint)

    def predict(self, audio: Audio, top_k: int = 5) -> list[dict]:
        """The top-k ``[{"label", "score"}]`` of one input; an unusable one raises
        :class:`~framework.errors.AudioError`."""
        result = self.predict_many([audio], top_k)[0]
        if result.error:
            raise AudioError(result.source, result.error)
        return result.top

    def predict_many(self, inputs: Sequence[Audio], top_k: int = 5) -> list[Prediction]:
        """One :class:`Prediction` per input, in order; an unusable input gets its ``error``
        and the others are still classified (their windows batched together)."""
        loaded = [self.load(audio, index) for index, audio in enumerate(inputs)]
        waves = [wave for _, wave, error in loaded if error is None]
        scores = self.scores(waves) if waves else np.zeros((0, len(self.labels)))
        rows = iter(scores)
        return [Prediction(source, None, error) if error else
                Prediction(source, top_labels(next(rows), self.labels, top_k))
                for source, _, error in loaded]

    def scores(self, waves: list[torch.Tensor]) -> np.ndarray:
        """Softmax scores (N, C) of waveforms at the model's rate: each clip's windows'
        logits averaged by the task, as in the windowed evaluation."""
        windows = WindowDataset(InMemoryClips(waves, self.sample_rate), self.window_secs)
        loader = DataLoader(windows, batch_size=self.batch_size, collate_fn=collate_windows)
        with self.lock:
            _, table = Evaluator(Distributed(), self.device, desc="predict").run(self.task,
                                                                                 loader)
        return table[[f"score_{c}" for c in self.labels]].to_numpy()

    def load(self, audio: Audio, index: int) -> tuple[str, torch.Tensor | None, str | None]:
        """(source name, mono waveform at the model's rate or None, error or None) of input
        number ``index``."""
        if isinstance(audio, (str, Path)):
            try:
                return str(audio), self.read_file(audio), None
            except AudioError as err:
                return str(audio), None, err.reason
        source = f"<array {index}>"
        if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
            return source, None, "expected a file path or a (waveform, sample_rate) pair"
        try:
            return source, self.from_array(*audio), None
        except (TypeError, ValueError) as err:
            return source, None, str(err)

    def read_file(self, path) -> torch.Tensor:
        info = inspect_audio(path)  # the stage-0 checks: truncation, NaN, non-audio, ...
        if not info.ok:
            raise AudioError(path, info.reason)
        return read_audio(path, sample_rate=self.sample_rate)

    def from_array(self, samples, sample_rate) -> torch.Tensor:
        """A waveform (T,) or (T, channels), any numeric dtype, at ``sample_rate`` Hz → mono
        float32 at the model's rate. Raises ValueError for an empty, non-finite or
        channels-first one."""
        wave = torch.as_tensor(np.asarray(samples), dtype=torch.float32)
        if wave.ndim == 2 and wave.shape[1] > wave.shape[0]:
            raise ValueError(f"a waveform of shape {tuple(wave.shape)}: give (T, channels), "
                             "as soundfile reads it (transpose a channels-first array)")
        if wave.ndim == 2:
            wave = wave.mean(dim=1)
        if wave.ndim != 1 or not len(wave):
            raise ValueError(f"expected a non-empty waveform (T,) or (T, channels), got "
                             f"shape {tuple(np.shape(samples))}")
        if not bool(torch.isfinite(wave).all()):
            raise ValueError("the waveform holds NaN or infinite samples")
        if int(sample_rate) <= 0:
            raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
        if int(sample_rate) != self.sample_rate:
            wave = AF.resample(wave, int(sample_rate), self.sample_rate)
        return wave


class InMemoryClips:
    """Waveforms as the clips a :class:`~framework.audio.segments.WindowDataset` windows
    (the part of :class:`~framework.audio.dataset.AudioDataset` it uses)."""

    def __init__(self, waves: list[torch.Tensor], sample_rate: int):
        self.waves, self.sample_rate = waves, sample_rate
        self.ids = [str(index) for index in range(len(waves))]

    def __len__(self) -> int:
        return len(self.waves)

    def num_frames(self, index: int) -> int:
        return len(self.waves[index])

    def window(self, index: int, start: int, frames: int) -> torch.Tensor:
        return self.waves[index][start:start + frames]


def top_labels(scores: np.ndarray, labels: list[str], top_k: int) -> list[dict]:
    """``[{"label", "score"}]`` of the ``top_k`` highest scores (C,), descending.

    >>> top_labels(np.array([0.2, 0.7, 0.1]), ["a", "b", "c"], 2)
    [{'label': 'b', 'score': 0.7}, {'label': 'a', 'score': 0.2}]
    """
    order = np.argsort(-scores, kind="stable")[:max(1, top_k)]
    return [{"label": labels[i], "score": float(scores[i])} for i in order]


def default_window_secs(cfg) -> float:
    """The window a trained config evaluates long clips with: ``test.window_secs``, else
    the length its test clips were cropped to (``test.max_secs``), else its training crop
    (``train.max_secs``), else :data:`FALLBACK_WINDOW_SECS`."""
    dataset = cfg.build_dataset
    for value in (dataset.test.get("window_secs"), dataset.test.get("max_secs"),
                  dataset.train.get("max_secs")):
        if value:
            return float(value)
    return FALLBACK_WINDOW_SECS


def require_classification(problem, command: str) -> None:
    """A UserError unless ``problem`` classifies clips (a speaker-verification run is
    pointed to ``score``)."""
    from framework.classification import UtteranceClassification

    if isinstance(problem, UtteranceClassification):
        return
    where = problem.target_dir
    if hasattr(problem, "score_files"):
        raise UserError(f"{where} is a speaker-verification run: `{command}` is for "
                        "classification runs; compare two files with `python -m framework "
                        f"score {where} a.wav b.wav`")
    raise UserError(f"{where}: problem {problem.problem_name()} is not a classification "
                    f"problem (UtteranceClassification); `{command}` cannot use it")


FILES_PER_CALL = 32  # the command classifies files in groups: bounded memory, early output
CSV_COLUMNS = ("file", "rank", "label", "score")


def predict_files(predictor: Predictor, files: list[str], top_k: int, csv_path=None,
                  out=None, err=None) -> int:
    """The ``predict`` command: per file, one JSON line ``{"file": path, "predictions":
    [{"label", "score"}, ...]}`` on ``out``, or with ``csv_path`` a CSV of
    :data:`CSV_COLUMNS` (one row per file and rank, rank 1 the best; written atomically);
    each unusable file is one ``error: path: reason`` line on ``err``. Returns how many
    files failed."""
    out, err = out or sys.stdout, err or sys.stderr
    rows, failed = [], 0
    with progress(total=len(files), desc="predict", unit="file",
                  disable=csv_path is None) as bar:
        for first in range(0, len(files), FILES_PER_CALL):
            for result in predictor.predict_many(files[first:first + FILES_PER_CALL], top_k):
                if result.error:
                    failed += 1
                    print(f"error: {result.source}: {result.error}", file=err, flush=True)
                elif csv_path is None:
                    print(json.dumps({"file": result.source, "predictions": result.top}),
                          file=out, flush=True)
                else:
                    rows += [(result.source, rank, item["label"], item["score"])
                             for rank, item in enumerate(result.top, start=1)]
                bar.update(1)
    if csv_path is not None:
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
    return failed
