"""framework.audio.io on real files written in tmp_path: formats, damage, segments, screening."""
from __future__ import annotations

import csv
import doctest
import os
import struct
import threading
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from framework.audio import io as audio_io
from framework.audio.io import inspect_audio, read_audio, screen_manifest
from framework.errors import AudioError


def _write(folder, name, data, rate=16000, **kwargs) -> str:
    path = str(folder / name)
    sf.write(path, data, rate, **kwargs)
    return path


def _sine(hz, seconds, rate, amplitude=0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _dominant_hz(wave: torch.Tensor, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def _cut(path, keep_bytes, name) -> str:
    """Copy of ``path`` holding only its first ``keep_bytes`` bytes."""
    cut = path.rsplit("/", 1)[0] + "/" + name
    with open(path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(keep_bytes))
    return cut


def _assert_rejected(path, reason_part):
    info = inspect_audio(path)
    assert not info.ok and reason_part in info.reason, info
    with pytest.raises(AudioError) as caught:
        read_audio(path)
    assert caught.value.path == str(path)
    return info


@contextmanager
def fifo_watchdog(fifo, seconds: float = 20):
    """Fail, rather than hang the suite, when the block opens ``fifo`` for reading and waits:
    after ``seconds`` a writer keeps opening and closing it, which releases such a reader."""
    stop, fired = threading.Event(), threading.Event()

    def release():
        if stop.wait(seconds):
            return
        fired.set()
        while not stop.wait(0.1):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader waiting right now
                pass

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    if fired.is_set():
        pytest.fail(f"opening {fifo} blocked for more than {seconds} s")


# ------------------------------------------------------------------ formats that must read


def test_stereo_44k_becomes_mono_16k_keeping_pitch_and_channel_mean(tmp_path):
    left, right = _sine(440, 1.0, 44100, 0.6), _sine(440, 1.0, 44100, 0.2)
    path = _write(tmp_path, "stereo.wav", np.stack([left, right], axis=1), 44100)
    wave = read_audio(path, sample_rate=16000)
    assert wave.dtype == torch.float32 and wave.shape == (16000,)
    assert _dominant_hz(wave, 16000) == pytest.approx(440, abs=1)
    peak = wave[1000:-1000].abs().max().item()
    assert peak == pytest.approx(0.4, abs=0.01)  # mean of the two channels' amplitudes
    info = inspect_audio(path)
    assert (info.ok, info.sample_rate, info.channels, info.duration) == (True, 44100, 2, 1.0)


def test_8k_is_upsampled(tmp_path):
    path = _write(tmp_path, "narrow.wav", _sine(1000, 0.5, 8000), 8000)
    wave = read_audio(path, sample_rate=16000)
    assert wave.shape == (8000,)
    assert _dominant_hz(wave, 16000) == pytest.approx(1000, abs=2)


def test_24bit_pcm_is_scaled_to_unit_range(tmp_path):
    # soundfile writes int32 data by its top 24 bits: 2**30 -> 2**22 -> 0.5 of full scale
    values = np.array([2**30, -(2**31), 2**29, 0], dtype=np.int32)
    path = _write(tmp_path, "deep.wav", values, subtype="PCM_24")
    assert read_audio(path).tolist() == [0.5, -1.0, 0.25, 0.0]
    assert inspect_audio(path).ok


def test_float32_wav_comes_back_as_stored(tmp_path):
    values = np.array([0.25, -0.75, 1.5, 0.0], dtype=np.float32)
    path = _write(tmp_path, "float.wav", values, subtype="FLOAT")
    assert read_audio(path).tolist() == values.tolist()
    assert inspect_audio(path).ok


def test_flac_is_lossless(tmp_path):
    ints = (np.arange(-8000, 8000) * 3).astype(np.int16)
    path = _write(tmp_path, "clip.flac", ints)
    assert torch.equal(read_audio(path), torch.from_numpy(ints.astype(np.float32) / 32768))
    assert inspect_audio(path).duration == 1.0


def test_silence_is_fine(tmp_path):
    path = _write(tmp_path, "silence.wav", np.zeros(16000, np.int16))
    assert read_audio(path).abs().sum().item() == 0.0
    assert inspect_audio(path).ok


# ------------------------------------------------------------------ damaged files


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_samples_are_rejected(tmp_path, bad, word):
    values = _sine(300, 2.0, 16000)
    values[24000] = bad
    path = _write(tmp_path, "bad.wav", values, subtype="FLOAT")
    info = _assert_rejected(path, word)
    assert "1.500 s" in info.reason  # where the first bad sample is
    assert read_audio(path, end=1.0).isfinite().all()  # the clean part stays usable


def test_empty_file(tmp_path):
    _assert_rejected(_write(tmp_path, "empty.wav", np.zeros(0, np.int16)), "empty (0 frames)")


def test_header_only_wav(tmp_path):
    good = _write(tmp_path, "good.wav", _sine(300, 1.0, 16000), subtype="PCM_16")
    info = _assert_rejected(_cut(good, 44, "header.wav"), "header only")
    assert "1.000 s" in info.reason


def test_truncated_wav_is_caught_although_libsndfile_shrinks_its_frame_count(tmp_path):
    good = _write(tmp_path, "good.wav", _sine(300, 1.0, 16000), subtype="PCM_16")
    cut = _cut(good, 44 + 8000, "cut.wav")
    assert sf.info(cut).frames == 4000  # libsndfile alone would not notice
    info = inspect_audio(cut)
    assert not info.ok
    assert info.reason == "truncated: header promises 1.000 s of audio, file holds 0.250 s"


def test_truncation_is_found_past_a_large_chunk_before_the_data(tmp_path):
    """Broadcast/edited WAVs carry metadata chunks (here 10 kB of JUNK) before ``data``."""
    samples = (np.arange(16000) % 100).astype("<i2").tobytes()  # 1 s, 16-bit mono, 16 kHz
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    chunks = (b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"JUNK" + struct.pack("<I", 10000)
              + bytes(10000) + b"data" + struct.pack("<I", len(samples)) + samples)
    path = tmp_path / "junk.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    assert inspect_audio(str(path)).ok
    assert read_audio(str(path))[99].item() == 99 / 32768
    cut = _cut(str(path), len(path.read_bytes()) - 16000, "junk_cut.wav")
    assert inspect_audio(cut).reason == \
        "truncated: header promises 1.000 s of audio, file holds 0.500 s"


def test_truncated_flac_is_caught_while_decoding(tmp_path):
    good = _write(tmp_path, "good.flac", _sine(300, 6.0, 16000))
    with open(good, "rb") as fh:
        size = len(fh.read())
    info = inspect_audio(_cut(good, size // 2, "cut.flac"))
    assert not info.ok and info.reason.startswith("truncated: header promises 6.000 s"), info


def test_wav_truncated_after_screening_is_refused_by_read_audio_too(tmp_path):
    """A file can be damaged after stage 0; reading it must not hand out a shorter wave."""
    good = _write(tmp_path, "good.wav", _sine(300, 1.0, 16000), subtype="PCM_16")
    with pytest.raises(AudioError, match="truncated: header promises 1.000 s"):
        read_audio(_cut(good, 44 + 8000, "cut.wav"), max_frames=1000)


def test_fifo_and_dangling_symlink_are_refused_without_blocking(tmp_path):
    fifo, link = tmp_path / "pipe.wav", tmp_path / "link.wav"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "nowhere.wav")
    with fifo_watchdog(fifo):
        assert inspect_audio(str(fifo)).reason == "not a regular file: a FIFO (named pipe)"
        with pytest.raises(AudioError, match="FIFO"):
            read_audio(str(fifo))
        with pytest.raises(AudioError, match="FIFO"):
            audio_io.audio_format(str(fifo))
    reason = f"dangling symlink: its target {tmp_path / 'nowhere.wav'} does not exist"
    assert inspect_audio(str(link)).reason == reason
    with pytest.raises(AudioError, match="dangling symlink"):
        read_audio(str(link))
    assert "a folder" in inspect_audio(str(tmp_path)).reason


def test_screening_lists_fifos_and_dangling_symlinks_and_never_waits(tmp_path):
    good = _write(tmp_path, "good.wav", _sine(300, 1.0, 16000), subtype="PCM_16")
    fifo, link = tmp_path / "pipe.wav", tmp_path / "link.wav"
    os.mkfifo(fifo)
    link.symlink_to(tmp_path / "nowhere.wav")
    manifest, excluded = tmp_path / "train.csv", tmp_path / "excluded.csv"
    pd.DataFrame({"id": ["g", "f", "l"], "wav_path": [good, str(fifo), str(link)]}).to_csv(
        manifest, index=False)
    with fifo_watchdog(fifo):
        result = screen_manifest(manifest, excluded, num_workers=2)
    assert (result.kept, result.excluded) == (1, 2)
    reasons = dict(pd.read_csv(excluded)[["id", "reason"]].itertuples(index=False))
    assert reasons == {"f": "not a regular file: a FIFO (named pipe)",
                       "l": f"dangling symlink: its target {tmp_path / 'nowhere.wav'} "
                            "does not exist"}


def test_text_file_named_wav_and_missing_file(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    _assert_rejected(str(text), "not readable as audio")
    _assert_rejected(str(tmp_path / "missing.wav"), "file not found")


# ------------------------------------------------------------------ long files, segments


def test_long_file_is_inspected_and_cropped_in_bounded_memory(tmp_path):
    path, rate, minutes = str(tmp_path / "long.wav"), 16000, 10
    with sf.SoundFile(path, "w", rate, 1, subtype="FLOAT") as out:  # 38 MB, written per second
        for second in range(minutes * 60):
            out.write(np.arange(second * rate, (second + 1) * rate, dtype=np.float32) / 1e7)
    file_bytes = minutes * 60 * rate * 4
    tracemalloc.start()
    try:
        info = inspect_audio(path)
        window = read_audio(path, offset_frames=5_000_000, max_frames=32000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.ok and info.duration == minutes * 60
    assert peak < file_bytes / 50, f"peak {peak} bytes for a {file_bytes}-byte file"
    assert torch.equal(window, torch.arange(5_000_000, 5_032_000, dtype=torch.float32) / 1e7)


def test_segment_reads_exactly_its_samples(tmp_path):
    ramp = np.arange(32000, dtype=np.int16)  # sample n holds n / 32768
    path = _write(tmp_path, "ramp.wav", ramp)
    expected = torch.arange(8000, 12000, dtype=torch.float32) / 32768
    assert torch.equal(read_audio(path, start=0.5, end=0.75), expected)
    assert torch.equal(read_audio(path, start=0.5, end=0.75, offset_frames=1000, max_frames=500),
                       expected[1000:1500])
    assert inspect_audio(path, start=0.5, end=0.75).duration == 0.25
    # NaN is how pandas hands over an empty start/end cell: the file's edge
    assert torch.equal(read_audio(path, start=float("nan"), end=np.float32(0.75)),
                       torch.arange(12000, dtype=torch.float32) / 32768)


def test_cropped_window_at_another_rate_has_the_requested_length(tmp_path):
    path = _write(tmp_path, "tone.wav", _sine(440, 1.0, 44100), 44100)
    full = read_audio(path)
    window = read_audio(path, offset_frames=1000, max_frames=4000)
    assert window.shape == (4000,)
    # the crop is resampled on the whole file's sample grid, with enough context around it
    assert torch.allclose(window, full[1000:5000], atol=1e-5)
    tail = read_audio(path, offset_frames=15000, max_frames=4000)
    assert torch.allclose(tail, full[15000:], atol=1e-5)  # the file ends before the window


def test_segment_beyond_the_end_is_flagged(tmp_path):
    path = _write(tmp_path, "one.wav", np.ones(16000, np.int16))
    assert inspect_audio(path, start=2.0).reason == \
        "segment starts at 2.000 s, beyond the file's end (1.000 s)"
    assert inspect_audio(path, start=0.5, end=1.5).reason == \
        "segment ends at 1.500 s, beyond the file's end (1.000 s)"
    assert "invalid segment" in inspect_audio(path, start=0.8, end=0.2).reason
    with pytest.raises(AudioError, match="beyond the file's end"):
        read_audio(path, start=0.5, end=1.5)
    # an end rounded up by a few milliseconds is clamped to the file's end
    assert inspect_audio(path, start=0.5, end=1.005).duration == 0.5
    assert read_audio(path, start=0.5, end=1.005).shape == (8000,)


# ------------------------------------------------------------------ screening a manifest


def test_screen_manifest_keeps_good_rows_and_lists_bad_ones(tmp_path):
    good = _write(tmp_path, "good.wav", _sine(300, 2.0, 16000), subtype="PCM_16")
    nan = _write(tmp_path, "nan.wav", np.full(800, np.nan, np.float32), subtype="FLOAT")
    cut = _cut(good, 44 + 1000, "cut.wav")
    rows = [("0007", good, "", "", "yes"), ("a", good, "0.5", "1.5", "no"),
            ("b", good, "1.5", "3.0", "no"), ("c", nan, "", "", "yes"),
            ("d", cut, "", "", "yes"), ("e", str(tmp_path / "gone.wav"), "", "", "up")]
    manifest = tmp_path / "train.csv"
    columns = ["id", "wav_path", "start", "end", "label"]
    pd.DataFrame(rows, columns=columns).to_csv(manifest, index=False)
    excluded = tmp_path / "excluded.csv"
    excluded.write_text("id,wav_path,reason\nold,old.wav,earlier run\n")

    result = screen_manifest(manifest, excluded, num_workers=2)

    assert (result.kept, result.excluded) == (2, 4)
    kept = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    assert list(kept.columns) == ["id", "wav_path", "start", "end", "label", "duration"]
    assert kept["id"].tolist() == ["0007", "a"]  # ids stay text, order kept
    assert kept["duration"].astype(float).tolist() == [2.0, 1.0]
    with open(excluded, newline="") as fh:
        listed = list(csv.reader(fh))
    assert listed[:2] == [["id", "wav_path", "reason"], ["old", "old.wav", "earlier run"]]
    reasons = {row[0]: row[2] for row in listed[2:]}
    assert reasons["b"].startswith("segment ends at 3.000 s")
    assert reasons["c"].startswith("NaN samples")
    assert reasons["d"].startswith("truncated")
    assert reasons["e"] == "file not found"

    # screening again changes nothing and still creates nothing new to exclude
    assert screen_manifest(manifest, excluded, num_workers=1) == result.__class__(2, 0)


def test_docstring_examples_run():
    results = doctest.testmod(audio_io)
    assert results.attempted >= 4 and results.failed == 0
