"""A synthetic GTZAN in the layout of the download (``genres_original/<genre>/<genre>.000NN.wav``)::

    python -m corpora.synthesize gtzan OUT_DIR [--clips-per-genre 100] [--secs 30] [--seed 0]

writes ``OUT_DIR/genres_original/`` (``prepare_data.dataset_root=OUT_DIR``): 10 genre folders
of 22,050 Hz mono 16-bit clips. Most clips last ``secs`` plus up to 300 samples (the real
clips are 30.01 s or so), one in five is 0-3 % shorter.

Each genre is a :class:`Style`: a tempo range, a drum pattern (kick, snare, hi-hat on an
8-step bar, with swing), and a pitched part (harmonics falling as k**-tilt, attack, decay,
register, notes per beat, tanh overdrive). Every clip draws its own tempo, key, tilt, drive,
drum level, channel tilt (±1 dB/octave), loudness and noise (15-35 dB SNR), and drops one
drum hit in ten, so neighbouring styles (rock/metal, pop/disco, blues/jazz) overlap: a
spectrum alone does not separate them, rhythm helps.

Faults planted as in the real corpus (whatever ``--clips-per-genre``, which must be >= 4):

* ``jazz/jazz.00054.wav`` is 10 kB of random bytes, readable by no audio library (the real
  one is unreadable too). With 55 or more clips per genre it takes clip 54's place, else it
  is an extra file.
* exact duplicates (byte-identical files): ``reggae``'s last clip is a copy of
  ``reggae.00000``; ``pop``'s last two clips are copies of ``pop.00000`` (a group of three);
  and one copy under another genre's name: ``metal``'s last clip is ``rock.00001``.

Rendering takes about 0.4 s of CPU per minute of audio (100 clips of 30 s: 19 s).
Deterministic for a seed: a clip's audio depends on the seed, its genre and its number only.
"""
from __future__ import annotations

import argparse
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from corpora.gtzan import GENRES
from corpora.synthesize import _smooth_length, _stub, colored_noise, fresh_root

SAMPLE_RATE = 22050
ROOT_NAME = "genres_original"
GARBAGE = ("jazz", 54)  # the real corpus's unreadable file
MIN_CLIPS = 4  # pop loses its last two clips to duplicates and keeps two songs
_HARMONICS = 10
_STEPS = 8  # eighth notes per 4/4 bar


@dataclass(frozen=True)
class Style:
    """How one genre sounds. Patterns have one character per eighth note: ``x`` hit."""
    bpm: tuple[float, float]
    kick: str
    snare: str
    hat: str
    swing: float  # delay of every off-beat eighth, as a share of an eighth
    tilt: float  # harmonic k has amplitude k ** -tilt: small is bright
    drive: float  # tanh overdrive of the pitched part; 0 is clean
    attack: float  # note attack, seconds
    decay: float  # note decay time constant, seconds: long is sustained
    register: tuple[float, float]  # fundamental range, Hz
    notes_per_beat: float
    drums_db: float | None  # drums relative to the pitched part; None: no drums
    offbeat: bool = False  # notes on the off-beats (reggae's skank)


STYLES = {
    "blues": Style((70, 100), "x...x...", "..x...x.", "x.x.x.x.", 0.33, 1.2, 0.4, 0.01,
                   0.4, (100, 170), 1, -6),
    "classical": Style((60, 90), "........", "........", "........", 0.0, 1.6, 0.0, 0.12,
                       1.5, (300, 520), 1, None),
    "country": Style((100, 130), "x...x...", "..x...x.", "xxxxxxxx", 0.0, 0.9, 0.0, 0.005,
                     0.25, (170, 280), 2, -8),
    "disco": Style((115, 130), "x.x.x.x.", "..x...x.", ".x.x.x.x", 0.0, 0.8, 0.1, 0.01,
                   0.2, (120, 200), 2, -2),
    "hiphop": Style((80, 100), "x..x.x..", "..x...x.", "x.x.x.x.", 0.2, 1.4, 0.0, 0.01,
                    0.3, (50, 85), 0.5, 0),
    "jazz": Style((110, 180), "x.......", "...x...x", "x.xxx.xx", 0.33, 1.0, 0.0, 0.03,
                  0.6, (140, 240), 2, -10),
    "metal": Style((140, 190), "xxxxxxxx", "..x...x.", "xxxxxxxx", 0.0, 0.5, 3.0, 0.005,
                   0.5, (70, 120), 2, -2),
    "pop": Style((100, 125), "x...x...", "..x...x.", "x.x.x.x.", 0.0, 0.9, 0.05, 0.02,
                 0.5, (220, 360), 1, -4),
    "reggae": Style((70, 90), "....x...", "....x...", ".x.x.x.x", 0.1, 1.1, 0.0, 0.005,
                    0.12, (120, 200), 1, -3, offbeat=True),
    "rock": Style((110, 150), "x...x.x.", "..x...x.", "x.x.x.x.", 0.0, 0.7, 1.2, 0.005,
                  0.5, (85, 140), 1, -3),
}
_SCALE = np.array([0, 2, 4, 7, 9, 12, 14, 16])  # major pentatonic over two octaves, semitones


def clip_name(genre: str, number: int) -> str:
    return f"{genre}.{number:05d}.wav"


def render_clip(rng: np.random.Generator, style: Style, samples: int) -> np.ndarray:
    """``samples`` of float32 audio at :data:`SAMPLE_RATE` in one ``style``, peak below 1."""
    bpm = rng.uniform(*style.bpm)
    eighth = 60 / bpm / 2 * SAMPLE_RATE  # samples per eighth note
    music = _pitched(rng, style, samples, eighth)
    if style.drums_db is not None:
        drums = _drums(rng, style, samples, eighth)
        level = 10 ** ((style.drums_db + rng.uniform(-4, 4)) / 20)
        music = music + level * drums / (np.std(drums) + 1e-9) * np.std(music)
    music = _channel(rng, music)
    # clip lengths are arbitrary; FFTs of a 5-smooth length are several times faster
    noise = colored_noise(rng, 1, _smooth_length(samples), rng.uniform(0, 2))[0, :samples]
    music = music / (np.std(music) + 1e-9)
    music += 10 ** (-rng.uniform(15, 35) / 20) * noise
    gain = 0.1 * 10 ** (rng.uniform(-6, 3) / 20)
    return np.clip(gain * music, -0.99, 0.99).astype(np.float32)


def _note_grid(rng: np.random.Generator, style: Style, samples: int, eighth: float):
    """Note onsets (samples, int) and fundamentals (Hz) of the pitched part."""
    step = 2 / style.notes_per_beat  # eighths per note
    onsets = np.arange(1 if style.offbeat else 0, samples / eighth, step) * eighth
    onsets = np.round(onsets).astype(int) if onsets.size else np.zeros(1, int)  # short clip
    root = np.exp(rng.uniform(*np.log(style.register)))
    degrees = _SCALE[rng.integers(0, _SCALE.size, onsets.size)]
    f0 = root * 2 ** (degrees / 12) * rng.uniform(0.995, 1.005, onsets.size)
    return onsets, np.minimum(f0, 2000)


def _pitched(rng: np.random.Generator, style: Style, samples: int, eighth: float) -> np.ndarray:
    """Additive-synthesis notes with attack/decay envelopes, optionally overdriven."""
    onsets, f0 = _note_grid(rng, style, samples, eighth)
    note = np.searchsorted(onsets, np.arange(samples), side="right") - 1
    playing = note >= 0
    note = np.maximum(note, 0)
    since = (np.arange(samples) - onsets[note]) / SAMPLE_RATE
    decay = style.decay * rng.uniform(0.7, 1.3)
    envelope = np.minimum(1, since / style.attack) * np.exp(-since / decay) * playing
    freq = f0[note] * (1 + 0.004 * np.sin(2 * np.pi * 5 * np.arange(samples) / SAMPLE_RATE))
    phase = 2 * np.pi * np.cumsum(freq) / SAMPLE_RATE
    tilt = style.tilt + rng.uniform(-0.1, 0.1)
    tone = np.zeros(samples)
    for k in range(1, _HARMONICS + 1):
        audible = k * freq < 0.45 * SAMPLE_RATE
        tone += k ** -tilt * np.sin(k * phase) * audible
    tone *= envelope
    if style.drive > 0:
        drive = style.drive * rng.uniform(0.7, 1.3)
        tone = np.tanh(drive * tone / (np.std(tone) + 1e-9)) / np.tanh(drive)
    return tone


def _drum_kernels(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One kick, snare and hi-hat sound per clip (a kit)."""
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    sweep = 45 + rng.uniform(60, 90) * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / SAMPLE_RATE) * np.exp(-t / 0.12)
    noise = rng.standard_normal(t.size)
    snare = (0.7 * noise + np.sin(2 * np.pi * rng.uniform(160, 220) * t)) * np.exp(-t / 0.07)
    hat = np.diff(noise, prepend=0) * np.exp(-t / rng.uniform(0.015, 0.04))
    return {"kick": kick, "snare": 0.6 * snare, "hat": 0.25 * hat}


def _drums(rng: np.random.Generator, style: Style, samples: int, eighth: float) -> np.ndarray:
    """The style's bar pattern repeated over the clip, each hit dropped with p = 0.1."""
    out = np.zeros(samples + int(0.3 * SAMPLE_RATE))
    steps = np.arange(int(samples / eighth) + 1)
    times = (steps + style.swing * (steps % 2)) * eighth
    for name, kernel in _drum_kernels(rng).items():
        pattern = np.array([c == "x" for c in getattr(style, name)])
        hits = pattern[steps % _STEPS] & (rng.random(steps.size) > 0.1)
        for start in np.round(times[hits]).astype(int):
            if start < samples:
                out[start:start + kernel.size] += kernel * rng.uniform(0.7, 1.0)
    return out[:samples]


def _channel(rng: np.random.Generator, audio: np.ndarray) -> np.ndarray:
    """A recording's colour: a spectral tilt of ±1 dB per octave around 1 kHz."""
    size = _smooth_length(audio.size)
    spectrum = np.fft.rfft(audio, size)
    freqs = np.maximum(np.fft.rfftfreq(size, 1 / SAMPLE_RATE), 20)
    slope = rng.uniform(-1, 1) / 6.02  # dB per octave → exponent of the amplitude
    return np.fft.irfft(spectrum * (freqs / 1000) ** slope, size)[:audio.size]


def clip_samples(rng: np.random.Generator, secs: float) -> int:
    """About ``secs`` of samples: mostly a little longer, one in five 0-3 % shorter."""
    base = int(round(secs * SAMPLE_RATE))
    if rng.random() < 0.2:
        return int(base * rng.uniform(0.97, 1.0))
    return base + int(rng.integers(0, 300))


def wav_bytes(audio: np.ndarray) -> bytes:
    """``audio`` (float, [-1, 1]) as a 22,050 Hz mono 16-bit PCM WAV file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _duplicates(clips: int) -> dict[tuple[str, int], tuple[str, int]]:
    """copy → source of every planted exact duplicate."""
    return {("reggae", clips - 1): ("reggae", 0), ("pop", clips - 1): ("pop", 0),
            ("pop", clips - 2): ("pop", 0), ("metal", clips - 1): ("rock", 1)}


def synthesize_gtzan(out_dir, clips_per_genre: int = 100, secs: float = 30.0,
                     seed: int = 0) -> dict[str, Path]:
    """Write ``out_dir/genres_original/``; return ``{"dataset_root": out_dir}``.

    >>> import tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> roots = synthesize_gtzan(tmp, clips_per_genre=4, secs=0.5)
    >>> sorted(p.name for p in (tmp / "genres_original" / "jazz").iterdir())
    ['jazz.00000.wav', 'jazz.00001.wav', 'jazz.00002.wav', 'jazz.00003.wav', 'jazz.00054.wav']
    >>> shutil.rmtree(tmp)
    """
    if clips_per_genre < MIN_CLIPS:
        raise ValueError(f"clips_per_genre={clips_per_genre}: need at least {MIN_CLIPS}")
    if not secs > 0:
        raise ValueError(f"secs={secs}: need > 0")
    root = fresh_root(Path(out_dir) / ROOT_NAME)
    copies = _duplicates(clips_per_genre)
    for g, genre in enumerate(GENRES):
        folder = root / genre
        folder.mkdir()
        for number in range(clips_per_genre):
            if (genre, number) in copies or (genre, number) == GARBAGE:
                continue
            rng = np.random.default_rng([seed, g, number])
            audio = render_clip(rng, STYLES[genre], clip_samples(rng, secs))
            (folder / clip_name(genre, number)).write_bytes(wav_bytes(audio))
    for (genre, number), (source, original) in copies.items():
        shutil.copyfile(root / source / clip_name(source, original),
                        root / genre / clip_name(genre, number))
    garbage = np.random.default_rng([seed, 99]).bytes(10_000)
    (root / GARBAGE[0] / clip_name(*GARBAGE)).write_bytes(garbage)
    _stub(root / "README.md", ROOT_NAME,
          f"{len(GENRES)} genres x {clips_per_genre} clips of about {secs:g} s at "
          f"{SAMPLE_RATE} Hz, the layout of GTZAN's genres_original/. The music is synthetic "
          "(see corpora/synth_gtzan.py), with an unreadable jazz.00054.wav and exact "
          "duplicates as in the real corpus.")
    return {"dataset_root": Path(out_dir)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clips-per-genre", type=int, default=100,
                        help=f"clips per genre folder (>= {MIN_CLIPS})")
    parser.add_argument("--secs", type=float, default=30.0, help="clip length, seconds")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Path]:
    return synthesize_gtzan(args.out_dir, args.clips_per_genre, args.secs, args.seed)
