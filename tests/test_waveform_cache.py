"""The waveform cache serves exactly what read_audio reads, and is shared and invalidated."""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import torch

from framework.audio.cache import WaveformCache
from framework.audio.io import read_audio


def write(path, data, rate, subtype):
    sf.write(path, data, rate, subtype=subtype)
    return str(path)


def test_cache_returns_the_decoded_audio_and_is_reused(tmp_path):
    rng = np.random.default_rng(0)
    pcm = write(tmp_path / "a.wav", (rng.normal(0, 0.1, 16000)).clip(-1, 1), 16000, "PCM_16")
    rows = [(pcm, None, None), (pcm, 0.25, 0.5)]
    cache = WaveformCache.open_or_build(rows, 16000, tmp_path / "cache")
    assert cache.dtype == np.int16  # mono 16-bit at the target rate: stored losslessly
    assert torch.equal(cache.get(0), read_audio(pcm))
    assert torch.equal(cache.get(1), read_audio(pcm, 0.25, 0.5))
    assert torch.equal(cache.get(0, offset=100, max_frames=50), read_audio(pcm)[100:150])
    again = WaveformCache.open_or_build(rows, 16000, tmp_path / "cache")
    assert again.folder == cache.folder
    assert len(list((tmp_path / "cache" / "waveforms").iterdir())) == 1


def test_other_rates_and_float_sources_are_cached_as_float32(tmp_path):
    stereo = write(tmp_path / "b.wav", np.full((8000, 2), 0.25), 8000, "FLOAT")
    cache = WaveformCache.open_or_build([(stereo, None, None)], 16000, tmp_path / "cache")
    assert cache.dtype == np.float32
    assert torch.allclose(cache.get(0), read_audio(stereo))


def test_a_changed_file_gets_a_new_cache(tmp_path):
    path = write(tmp_path / "c.wav", np.zeros(1600), 16000, "PCM_16")
    first = WaveformCache.open_or_build([(path, None, None)], 16000, tmp_path / "cache")
    write(path, np.full(3200, 0.5), 16000, "PCM_16")
    os.utime(path, ns=(1, 1))
    second = WaveformCache.open_or_build([(path, None, None)], 16000, tmp_path / "cache")
    assert second.folder != first.folder and len(second.get(0)) == 3200
