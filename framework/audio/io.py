"""Read audio files and screen a corpus for files that would break training.

Three entry points:

* :func:`read_audio` -- one waveform (a whole file, a segment of it, or a crop of that
  segment), mono, float32, at the requested sample rate. Bad files raise
  :class:`~framework.errors.AudioError`.
* :func:`inspect_audio` -- says whether a file (or segment) is usable and why not, without
  raising and without ever holding more than one second of audio in memory.
* :func:`screen_manifest` -- runs :func:`inspect_audio` over a manifest CSV once (stage 0),
  keeps the good rows, and appends the bad ones with their reason to an exclusion CSV.

Audio is read with soundfile (libsndfile) only. Two libsndfile behaviours shape this module:

* On a truncated WAV, libsndfile silently shrinks the frame count to what the file holds
  (``frames`` reports 4000 where the header promised 16000), and a WAV cut right after its
  header opens as a normal 0-frame file. Comparing frames read with ``frames`` therefore
  never notices; we read the ``data`` chunk size from the RIFF header ourselves and compare
  it with the bytes present.
* On a truncated FLAC, ``frames`` keeps the header's promise and decoding raises
  ("flac decoder lost sync") where the data ends, so for non-WAV formats we decode the
  requested range block by block and compare what was decoded with what was promised.

Example:

>>> import numpy as np, soundfile as sf, tempfile, os
>>> tmp = tempfile.TemporaryDirectory()
>>> path = os.path.join(tmp.name, "tone.wav")
>>> sf.write(path, np.zeros((8000, 2), np.int16), 8000)   # 1 s, stereo, 8 kHz
>>> read_audio(path, sample_rate=16000).shape
torch.Size([16000])
>>> inspect_audio(path, start=0.5, end=2.0).reason
"segment ends at 2.000 s, beyond the file's end (1.000 s)"
>>> tmp.cleanup()
"""
from __future__ import annotations

import csv
import math
import os
import stat
import struct
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF

from framework.errors import AudioError, CorpusError
from framework.progress import progress

__all__ = ["AudioFormat", "AudioInfo", "ScreenResult", "audio_format", "inspect_audio",
           "read_audio", "screen_manifest"]

# A segment may end this far past the file's end (timestamps rounded to 10 ms are common);
# the read is then clamped to the file's end. Anything further is a manifest error.
END_TOLERANCE_S = 0.01

# Sample periods (of the lower rate) that torchaudio's default sinc kernel reaches on each
# side (lowpass_filter_width 6 / rolloff 0.99, rounded up): a cropped read takes this much
# extra audio so the crop resamples as it would inside the whole file.
RESAMPLE_CONTEXT = 7

# Every bit pattern of integer PCM is a valid sample, so decoding such a WAV can reveal
# nothing its header check has not; screening skips the decode for these subtypes.
_INTEGER_PCM = frozenset({"PCM_S8", "PCM_U8", "PCM_16", "PCM_24", "PCM_32"})
_FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE"})

# RIFF sizes of these values mean "unknown length" (streamed output), not a promise.
_UNKNOWN_RIFF_SIZES = (0, 0xFFFFFFFF)

_HEADER_BYTES = 4096  # first read of a file: covers the chunk headers of ordinary WAVs
_EXCLUDED_COLUMNS = ["id", "wav_path", "reason"]
_FILES_PER_TASK = 64  # screening work unit: large enough to amortise thread hand-offs


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`inspect_audio` found.

    ``ok``: the file (segment) can be used for training. ``reason``: one line saying why not
    (empty when ok). ``duration``: seconds of the requested segment (whole file when no
    segment was given); 0.0 when not ok. ``sample_rate`` (Hz) and ``channels``: from the
    header, 0 when the file cannot be opened.
    """

    ok: bool
    reason: str
    duration: float
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class ScreenResult:
    """Row counts of one :func:`screen_manifest` call: rows kept, rows moved to the
    exclusion CSV."""

    kept: int
    excluded: int


class _RiffData(NamedTuple):
    """A WAV's ``data`` chunk: bytes its header promises, bytes the file holds after the
    chunk header, and the fmt chunk's average bytes per second (0 if none came first)."""

    promised_bytes: int
    held_bytes: int
    bytes_per_second: int


# --------------------------------------------------------------------------- opening


def _open(path, fd: int) -> sf.SoundFile:
    """A SoundFile on the descriptor ``fd`` open on ``path`` (left open by the returned file);
    non-audio files raise AudioError."""
    try:
        return sf.SoundFile(fd, closefd=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise AudioError(path, f"not readable as audio: {_sf_message(err)}") from None


def _sf_message(err: Exception) -> str:
    """libsndfile's own text for ``err``, without soundfile's "Error opening ...:" prefix."""
    message = getattr(err, "error_string", None) or str(err)
    return message.removeprefix("Error : ").strip()


_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISDIR, "a folder"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def _open_regular(path) -> tuple[int, int]:
    """``(descriptor, size)`` of the regular file ``path``; anything else raises AudioError.

    Opened with O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer
    forever (for a regular file the flag changes nothing). A dangling symlink says so.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        if os.path.islink(path):
            raise AudioError(path, f"dangling symlink: its target {os.readlink(path)} "
                                   "does not exist") from None
        raise AudioError(path, "file not found") from None
    except OSError as err:
        raise AudioError(path, f"cannot open: {err.strerror or err}") from None
    mode = os.fstat(fd)
    if not stat.S_ISREG(mode.st_mode):
        os.close(fd)
        kind = next((name for test, name in _NOT_REGULAR if test(mode.st_mode)), "special")
        raise AudioError(path, f"not a regular file: {kind}")
    return fd, mode.st_size


@contextmanager
def _open_with_riff(path):
    """Open ``path`` once, yielding ``(SoundFile, _RiffData or None)``.

    One descriptor serves both the header walk and libsndfile: screening is dominated by
    per-file opening costs, not by reading.
    """
    fd, size = _open_regular(path)
    try:
        riff = _riff_data(fd, size)
        with _open(path, fd) as f:
            yield f, riff
    finally:
        os.close(fd)


def _riff_data(fd: int, file_size: int) -> Optional[_RiffData]:
    """Sizes of a RIFF/RIFX WAV's ``data`` chunk, or None for any other kind of file.

    Reads with ``pread`` (libsndfile later starts from offset 0). One read of
    _HEADER_BYTES holds every chunk header before ``data`` in ordinary files; each syscall
    saved matters when threads share the GIL. Bigger leading chunks are hopped over.
    """
    head = os.pread(fd, _HEADER_BYTES, 0)

    def read(position: int, size: int) -> bytes:
        if position + size <= len(head):
            return head[position:position + size]
        return os.pread(fd, size, position)

    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        return None
    endian = "<" if head[:4] == b"RIFF" else ">"
    bytes_per_second, position = 0, 12
    for _ in range(64):  # a real WAV has a handful of chunks before ``data``
        chunk = read(position, 8)
        if len(chunk) < 8:
            return None
        kind, size = chunk[:4], struct.unpack(endian + "I", chunk[4:])[0]
        position += 8
        if kind == b"data":
            return _RiffData(size, file_size - position, bytes_per_second)
        if kind == b"fmt ":
            fmt = read(position, 12)
            bytes_per_second = struct.unpack(endian + "I", fmt[8:12])[0] if len(fmt) == 12 else 0
        position += size + (size & 1)  # chunk bodies are padded to even length
    return None


# --------------------------------------------------------------------------- checks


def _truncation_reason(promised_s: float, held_s: float, detail: str = "") -> str:
    """One-line reason for a file holding less audio than its header promises."""
    suffix = f" ({detail})" if detail else ""
    if held_s <= 0:
        return f"header only: header promises {promised_s:.3f} s of audio, file holds none{suffix}"
    return (f"truncated: header promises {promised_s:.3f} s of audio, "
            f"file holds {held_s:.3f} s{suffix}")


def _check_riff_sizes(path, riff: Optional[_RiffData]) -> None:
    """Raise AudioError when a WAV's ``data`` chunk is longer than the bytes in the file."""
    # bytes_per_second is 0 only when no fmt chunk precedes ``data``; nothing to compare then.
    if riff is None or riff.promised_bytes in _UNKNOWN_RIFF_SIZES or not riff.bytes_per_second:
        return
    if riff.held_bytes < riff.promised_bytes:
        rate = riff.bytes_per_second
        raise AudioError(path, _truncation_reason(
            riff.promised_bytes / rate, max(riff.held_bytes, 0) / rate))


def _is_nan(value) -> bool:
    """True for a NaN of any float type (how pandas spells an empty start/end cell)."""
    return value is not None and math.isnan(value)


def _segment_frames(path, f: sf.SoundFile, start: Optional[float], end: Optional[float]):
    """Frame range ``[first, last)`` of the segment ``start``..``end`` (seconds) in ``f``.

    None (or NaN) means the file's edge. ``last`` is clamped to the file's end when the segment ends
    at most END_TOLERANCE_S past it. Raises AudioError for an empty file, an inverted or
    negative segment, or a segment beyond the file's end.
    """
    rate, frames = f.samplerate, f.frames
    if frames <= 0:
        raise AudioError(path, "empty (0 frames)")
    start, end = (None if _is_nan(bound) else bound for bound in (start, end))
    if not all(bound is None or math.isfinite(bound) for bound in (start, end)):
        raise AudioError(path, f"invalid segment: start={start} s, end={end} s")
    first = 0 if start is None else round(start * rate)
    last = frames if end is None else round(end * rate)
    beyond = f"beyond the file's end ({frames / rate:.3f} s)"
    if first >= frames:
        raise AudioError(path, f"segment starts at {start:.3f} s, {beyond}")
    if first < 0 or last <= first:
        raise AudioError(path, f"invalid segment: start={start} s, end={end} s")
    if last > frames + END_TOLERANCE_S * rate:
        raise AudioError(path, f"segment ends at {end:.3f} s, {beyond}")
    return first, min(last, frames)


def _non_finite_reason(block: np.ndarray, first_frame: int, rate: int) -> Optional[str]:
    """Reason naming the first NaN/inf sample of ``block`` (frames x channels), else None."""
    finite = np.isfinite(block)
    if finite.all():
        return None
    row = int(np.argmin(finite.all(axis=1)))
    kind = "NaN" if np.isnan(block[row]).any() else "infinite"
    return f"{kind} samples (first at {(first_frame + row) / rate:.3f} s)"


def _scan(path, f: sf.SoundFile, first: int, last: int) -> None:
    """Decode frames ``[first, last)`` one second at a time; raise AudioError on a bad sample,
    a decoding error or fewer frames than the header promised. Memory: one block."""
    rate = f.samplerate
    block = np.empty((rate, f.channels), dtype=np.float32)  # reused: the only buffer held
    position = first
    while position < last:
        wanted = min(rate, last - position)
        try:
            if position == first:  # seeking fails too when the promised data is missing
                f.seek(first)
            got = f.read(wanted, out=block[:wanted])
        except (sf.LibsndfileError, RuntimeError) as err:
            raise AudioError(path, _truncation_reason(
                f.frames / rate, position / rate, f"decoding fails: {_sf_message(err)}")) from None
        reason = _non_finite_reason(got, position, rate)
        if reason:
            raise AudioError(path, reason)
        position += len(got)
        if len(got) < wanted:
            raise AudioError(path, _truncation_reason(f.frames / rate, position / rate))


def _check_open_file(path, f: sf.SoundFile, riff: Optional[_RiffData], start, end):
    """All checks on an opened file; returns the segment's frame range or raises AudioError."""
    _check_riff_sizes(path, riff)
    first, last = _segment_frames(path, f, start, end)
    if riff is None or f.subtype not in _INTEGER_PCM:
        _scan(path, f, first, last)
    return first, last


def inspect_audio(path, start: Optional[float] = None, end: Optional[float] = None) -> AudioInfo:
    """Check whether ``path`` (or its segment ``start``..``end``, seconds) can be trained on.

    Never raises for a bad file: returns ``AudioInfo(ok=False, reason=...)`` for a missing,
    unreadable or non-audio file, a dangling symlink, a FIFO or other non-regular file
    (never opened in a way that could block), an empty (0-frame) file, a header-only or
    truncated file, NaN or infinite samples, and a segment that is inverted or lies beyond
    the file's end.
    Silent (all-zero) audio is ok. Float and compressed data is decoded in blocks of one
    second, only over the requested segment; integer-PCM WAV needs its header alone.

    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "x.wav")
    >>> sf.write(path, np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    >>> inspect_audio(path).reason
    'NaN samples (first at 0.000 s)'
    >>> tmp.cleanup()
    """
    rate = channels = 0
    try:
        with _open_with_riff(path) as (f, riff):
            rate, channels = f.samplerate, f.channels
            first, last = _check_open_file(path, f, riff, start, end)
    except AudioError as err:
        return AudioInfo(False, err.reason, 0.0, rate, channels)
    return AudioInfo(True, "", (last - first) / rate, rate, channels)


class AudioFormat(NamedTuple):
    """What a file's header says: rate (Hz), channels and libsndfile subtype (``PCM_16``...)."""

    sample_rate: int
    channels: int
    subtype: str


def audio_format(path) -> AudioFormat:
    """The header of ``path``, nothing decoded; AudioError when it cannot be opened as audio
    (a FIFO is refused, never waited on)."""
    with _open_with_riff(path) as (f, _):
        return AudioFormat(f.samplerate, f.channels, f.subtype)


# --------------------------------------------------------------------------- reading


def _check_window(offset_frames: Optional[int], max_frames: Optional[int]) -> None:
    """Reject crop arguments that can only be a caller's bug."""
    if offset_frames is not None and offset_frames < 0:
        raise ValueError(f"offset_frames must be >= 0, got {offset_frames}")
    if max_frames is not None and max_frames <= 0:
        raise ValueError(f"max_frames must be > 0, got {max_frames}")


def _crop_window(path, first: int, last: int, source_rate: int, target_rate: int,
                 offset_frames: Optional[int], max_frames: Optional[int]):
    """Source frames to read for a crop of the segment ``[first, last)``.

    The crop starts ``offset_frames`` (target-rate frames) after ``first`` and spans
    ``max_frames`` target frames. Returns ``(first, last, skip)``: read source frames
    ``[first, last)``, resample, then drop ``skip`` leading target frames. The read starts
    on a frame where both rates' sample grids meet and, when resampling, RESAMPLE_CONTEXT
    frames early, so the crop equals the same span of the whole segment resampled.
    """
    _check_window(offset_frames, max_frames)
    offset = offset_frames or 0
    if first + offset * source_rate / target_rate >= last:
        raise AudioError(path, f"nothing to read: offset_frames={offset} is past the segment's end")
    common = math.gcd(source_rate, target_rate)
    target_step, source_step = target_rate // common, source_rate // common
    context = 0 if source_rate == target_rate else math.ceil(
        RESAMPLE_CONTEXT * target_rate / min(source_rate, target_rate))
    aligned = max(0, offset - context) // target_step * target_step  # target frames
    start = first + aligned // target_step * source_step
    if max_frames is not None:
        span = offset - aligned + max_frames + context  # target frames to cover
        last = min(last, start + math.ceil(span * source_rate / target_rate))
    return start, last, offset - aligned


def _read_frames(path, f: sf.SoundFile, first: int, last: int) -> np.ndarray:
    """Frames ``[first, last)`` of ``f`` as float32 (frames x channels); integer PCM is
    scaled to [-1, 1) by libsndfile."""
    try:
        f.seek(first)
        data = f.read(last - first, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        where = f"{first / f.samplerate:.3f} s"
        raise AudioError(path, f"cannot decode at {where}: {_sf_message(err)}") from None
    if len(data) == 0:
        raise AudioError(path, "empty (0 frames)")
    return data


def _to_mono(data: np.ndarray) -> torch.Tensor:
    """(frames x channels) float32 -> 1-D tensor, the mean over channels."""
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(mono))


def read_audio(path, start: Optional[float] = None, end: Optional[float] = None,
               sample_rate: int = 16000, max_frames: Optional[int] = None,
               offset_frames: Optional[int] = None) -> torch.Tensor:
    """Read a mono float32 waveform of shape ``(frames,)`` at ``sample_rate`` Hz.

    * ``start``/``end``: segment bounds in seconds of the file (None or NaN = the file's edge).
      An ``end`` up to END_TOLERANCE_S past the file's end is clamped to it.
    * ``offset_frames``/``max_frames``: a crop of that segment, both in frames at
      ``sample_rate``: the result starts ``offset_frames`` (default 0) after the segment's
      start and holds at most ``max_frames`` frames (fewer when the segment ends first).
      Only the corresponding source frames are read from disk.

    Only the requested frames are read (seek + read). Channels are averaged. A different
    source rate is resampled with ``torchaudio.functional.resample``; a crop is read with a
    few frames of context, so it equals the same span of the whole segment resampled (to
    float rounding). Integer PCM comes back in [-1, 1]; float
    files come back as stored. Raises AudioError (path + one-line reason) for a missing,
    unreadable, empty or not regular file (a FIFO never blocks), a WAV holding less data
    than its header promises (truncated), a segment beyond the file's end, and NaN/inf
    samples; the result never contains NaN. Other damage that only decoding reveals (a
    truncated FLAC) raises when the read reaches it; :func:`screen_manifest` checks whole
    files once, up front.

    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = os.path.join(tmp.name, "ramp.wav")
    >>> sf.write(path, np.arange(8000, dtype=np.int16), 8000)
    >>> read_audio(path, start=0.5, sample_rate=8000, offset_frames=10, max_frames=3) * 32768
    tensor([4010., 4011., 4012.])
    >>> tmp.cleanup()
    """
    with _open_with_riff(path) as (f, riff):
        _check_riff_sizes(path, riff)
        first, last = _segment_frames(path, f, start, end)
        first, last, skip = _crop_window(path, first, last, f.samplerate, sample_rate,
                                         offset_frames, max_frames)
        wave = _to_mono(_read_frames(path, f, first, last))
        source_rate, is_float = f.samplerate, f.subtype in _FLOAT_SUBTYPES
    if not bool(torch.isfinite(wave).all()):
        reason = _non_finite_reason(wave.numpy()[:, None], first, source_rate)
        raise AudioError(path, reason)
    if source_rate != sample_rate:
        wave = AF.resample(wave, source_rate, sample_rate)
        if not is_float:  # resampling rings slightly past full scale; keep the [-1, 1] promise
            wave = wave.clamp_(-1.0, 1.0)
    return wave[skip:] if max_frames is None else wave[skip:skip + max_frames]


# --------------------------------------------------------------------------- screening


def _parse_seconds(text: str) -> Optional[float]:
    """A manifest's start/end cell as seconds; empty or NaN means None (the file's edge)."""
    text = text.strip()
    if not text:
        return None
    value = float(text)  # ValueError for junk: the caller turns it into a reason
    return None if math.isnan(value) else value


def _inspect_key(key) -> AudioInfo:
    """inspect_audio for a manifest key ``(wav_path, start_text, end_text)``."""
    path, start_text, end_text = key
    try:
        start, end = _parse_seconds(start_text), _parse_seconds(end_text)
    except ValueError:
        reason = f"invalid segment bounds: start={start_text!r}, end={end_text!r}"
        return AudioInfo(False, reason, 0.0, 0, 0)
    return inspect_audio(path, start, end)


def _inspect_chunk(keys) -> dict:
    """{key: AudioInfo} for a list of manifest keys (one thread's unit of work)."""
    return {key: _inspect_key(key) for key in keys}


def _inspect_all(keys: list, num_workers: int, desc: str) -> dict:
    """{key: AudioInfo} for every key, on ``num_workers`` threads, with a progress bar.

    Threads, not processes: libsndfile and the open/pread syscalls release the GIL, and a
    worker process would pay torch's import before its first file. Measured on 2 cores
    (bench/audio_screen.py): no gain for integer-PCM WAV, whose ~70 us per file is mostly
    soundfile's Python wrapper holding the GIL; ~15% for float data, decoded outside it.
    """
    chunks = [keys[i:i + _FILES_PER_TASK] for i in range(0, len(keys), _FILES_PER_TASK)]
    found = {}
    with progress(total=len(keys), desc=desc, unit="file") as bar, \
            ThreadPoolExecutor(max(1, num_workers)) as pool:
        for result in pool.map(_inspect_chunk, chunks):
            found.update(result)
            bar.update(len(result))
    return found


def _read_manifest(csv_path) -> pd.DataFrame:
    """The manifest as text cells (so ids like ``0007`` survive the rewrite unchanged)."""
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in ("id", "wav_path") if c not in table.columns]
    if missing:
        raise CorpusError(f"{csv_path}: manifest lacks column(s) {', '.join(missing)}; "
                          f"it has {', '.join(table.columns)}")
    return table


def _segment_keys(table: pd.DataFrame) -> list:
    """One ``(wav_path, start_text, end_text)`` key per row; missing columns give ''."""
    blank = [""] * len(table)
    starts = table["start"] if "start" in table.columns else blank
    ends = table["end"] if "end" in table.columns else blank
    return list(zip(table["wav_path"], starts, ends))


def _write_csv_atomically(table: pd.DataFrame, csv_path) -> None:
    """Replace ``csv_path`` with ``table`` so readers see the old or the new file, never half."""
    folder = os.path.dirname(os.path.abspath(csv_path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".screen-", suffix=".csv.tmp")
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            table.to_csv(fh, index=False)
        if os.path.exists(csv_path):  # mkstemp makes 0600 files; keep the manifest's mode
            os.chmod(tmp_path, stat.S_IMODE(os.stat(csv_path).st_mode))
        os.replace(tmp_path, csv_path)
    except BaseException:
        os.unlink(tmp_path)
        raise


def _append_excluded(excluded_csv, rows: list) -> None:
    """Append ``(id, wav_path, reason)`` rows; create the file with a header if absent."""
    folder = os.path.dirname(os.path.abspath(excluded_csv))
    os.makedirs(folder, exist_ok=True)
    is_new = not os.path.exists(excluded_csv) or os.path.getsize(excluded_csv) == 0
    with open(excluded_csv, "a", newline="") as fh:
        writer = csv.writer(fh)
        if is_new:
            writer.writerow(_EXCLUDED_COLUMNS)
        writer.writerows(rows)


def screen_manifest(csv_path, excluded_csv, num_workers: int = 2,
                    desc: Optional[str] = None) -> ScreenResult:
    """Drop unusable rows from a manifest CSV, in place, and record why.

    ``csv_path`` needs columns ``id`` and ``wav_path`` (used as given: relative paths are
    relative to the current directory) and may have ``start``/``end`` (seconds; empty or
    NaN = the file's edge). Each distinct ``(wav_path, start, end)`` is checked once with
    :func:`inspect_audio`, on ``num_workers`` threads.

    Effects: ``csv_path`` is rewritten atomically with only the good rows, all columns
    kept in order and their text unchanged, plus a ``duration`` column (seconds of the
    used segment; updated if present, else appended last). Bad rows are appended to
    ``excluded_csv`` as ``id, wav_path, reason`` (created with a header if absent).
    Returns the counts of kept and excluded rows.

    >>> import numpy as np, soundfile as sf, tempfile
    >>> from pathlib import Path
    >>> tmp = tempfile.TemporaryDirectory()
    >>> good, gone = Path(tmp.name, "a.wav"), Path(tmp.name, "gone.wav")
    >>> sf.write(good, np.zeros(8000, np.int16), 16000)
    >>> manifest = Path(tmp.name, "train.csv")
    >>> _ = manifest.write_text(f"id,wav_path\\nu1,{good}\\nu2,{gone}\\n")
    >>> screen_manifest(manifest, Path(tmp.name, "excluded.csv"))
    ScreenResult(kept=1, excluded=1)
    >>> manifest.read_text().splitlines()[1] == f"u1,{good},0.5"
    True
    >>> tmp.cleanup()
    """
    table = _read_manifest(csv_path)
    keys = _segment_keys(table)
    infos = _inspect_all(list(dict.fromkeys(keys)), num_workers,
                         desc or f"screening {os.path.basename(str(csv_path))}")
    row_infos = [infos[key] for key in keys]
    good = np.array([info.ok for info in row_infos], dtype=bool)
    bad_rows = [(row_id, path, info.reason) for row_id, path, info, ok
                in zip(table["id"], table["wav_path"], row_infos, good) if not ok]
    kept = table[good].copy()
    kept["duration"] = [repr(round(info.duration, 6)) for info in row_infos if info.ok]
    _write_csv_atomically(kept, csv_path)
    _append_excluded(excluded_csv, bad_rows)
    return ScreenResult(kept=len(kept), excluded=len(bad_rows))
