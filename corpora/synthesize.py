"""Synthetic corpora written in the exact folder layouts of the real ones.

Demos and tests run the real corpus parsers on these folders, so nothing is downloaded::

    python -m corpora.synthesize speech_commands OUT_DIR [--speakers N] [--seed S]
        [--version v0.01|v0.02|both] [--noise-secs F]
    python -m corpora.synthesize voxceleb1 OUT_DIR [--speakers 16] [--test-speakers 8]
        [--videos 3] [--utterances 4] [--min-secs 2.0] [--max-secs 5.0] [--seed S]
    python -m corpora.synthesize gtzan OUT_DIR [--clips-per-genre 100] [--secs 30] [--seed S]

A corpus is one entry of :data:`SYNTHESIZERS` (name → :class:`Synthesizer`); each entry
becomes a subcommand. Output is deterministic for a given seed. Audio is 16 kHz mono
16-bit PCM. A root that already exists is replaced only if it was written by this module.

Speech Commands audio: each word has a fixed spectral signature (three formant bands on a
mel-spaced grid; two words share at most one band) excited by a harmonic source, so even a
mean-pooled log-mel feature separates the words. Speakers differ in pitch (90–250 Hz), shift their formants by up to
±4 % and differ in loudness; each clip varies onset, length (0.7–1.0 s) and background
noise (10–25 dB SNR). ``_silence_`` is noise about 14 dB below a word's level.

VoxCeleb1 audio: utterances are random sequences of 60–180 ms "phones" (12 vowels with
three formants on a harmonic comb, 4 fricatives; the same inventory for every speaker and
seed), so content changes from clip to clip. A speaker keeps a voice: a pitch (85–255 Hz)
and a vocal-tract factor (formants ×0.88–1.14) from grids, and a colour, ±7.5 dB in six
half-octave bands, that differs from every other speaker's by at least 5 grid steps. Each
video is a recording session with its own channel (±1 dB/octave tilt, ±3 dB bumps, low cut)
and pink-to-brown noise at 15–30 dB SNR, so same-speaker trials across videos are not
trivial. The default corpus (24 speakers, 288 clips of 2–5 s) takes about 1 s on 2 cores.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import shutil
import string
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile

from corpora import synth_clips
from corpora.speech_commands import (NOISE_DIR, SILENCE, SUPERB_WORDS, TEST_LIST, UNKNOWN,
                                     VALID_LIST, WORDS_V1, WORDS_V2)
from corpora.voxceleb1 import IDEN_SPLIT_FILE, META_FILE, META_HEADER, TEST_SPEAKERS

SAMPLE_RATE = 16000
_MARKER = "Synthetic corpus written by corpora.synthesize"


# ---------------------------------------------------------------- shared audio helpers

def colored_noise(rng: np.random.Generator, count: int, samples: int,
                  exponent: np.ndarray | float) -> np.ndarray:
    """``(count, samples)`` noise with power ∝ 1/f**exponent (0 white, 1 pink, 2 brown).

    ``exponent`` is a scalar or one value per row; every row has unit RMS, no DC.
    """
    freqs = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE).astype(np.float32)
    exponent = np.broadcast_to(np.asarray(exponent, dtype=np.float32), (count,))
    # Below 20 Hz the 1/f shape would put most of the brown noise's energy in inaudible drift.
    tilt = np.maximum(freqs, np.float32(20))[None, :] ** (-exponent[:, None] / 2)
    spectrum = _white_spectrum(rng, count, freqs.size) * tilt
    spectrum[:, 0] = 0
    return _unit_rms(np.fft.irfft(spectrum, samples).astype(np.float32))


def hum(rng: np.random.Generator, samples: int) -> np.ndarray:
    """Unit-RMS mains hum: 50 or 60 Hz with decaying harmonics over faint white noise."""
    mains = rng.choice([50.0, 60.0])
    t = np.arange(samples) / SAMPLE_RATE
    harmonics = np.arange(1, 16)[:, None]
    phases = rng.uniform(0, 2 * np.pi, (harmonics.size, 1))
    tone = (np.sin(2 * np.pi * mains * harmonics * t + phases) / harmonics).sum(0)
    floor = 0.02 * colored_noise(rng, 1, samples, 0.0)[0]
    return _unit_rms((_unit_rms(tone) + floor).astype(np.float32))


def write_wav(path: Path, audio: np.ndarray) -> None:
    """Write float audio in [-1, 1] as 16 kHz mono 16-bit PCM (clipping beyond)."""
    pcm = np.round(np.clip(audio, -1, 1) * 32767).astype(np.int16)
    # Encoding in memory skips the fsync soundfile does on closing a real file: 3x faster.
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def fresh_root(root: Path) -> Path:
    """Create ``root`` empty; an old root is removed only if this module wrote it."""
    if root.exists():
        readme = root / "README.md"
        if not (readme.is_file() and readme.read_text().startswith(_MARKER)):
            raise FileExistsError(f"{root} exists and was not written by corpora.synthesize; "
                                  "choose another OUT_DIR or remove it")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def _white_spectrum(rng: np.random.Generator, count: int, bins: int) -> np.ndarray:
    """(count, bins) complex64 with i.i.d. zero-mean parts: a flat spectrum, random phase."""
    # Uniform draws are ~6x faster than normal ones; the inverse FFT makes samples Gaussian.
    parts = rng.random((count, bins, 2), dtype=np.float32) - np.float32(0.5)
    return parts.view(np.complex64)[..., 0]


def _unit_rms(audio: np.ndarray) -> np.ndarray:
    return audio / np.sqrt(np.mean(audio ** 2, axis=-1, keepdims=True) + 1e-12)


def _stub(path: Path, title: str, body: str) -> None:
    path.write_text(f"{_MARKER}: {title}\n\n{body}\n")


# ---------------------------------------------------------------- Speech Commands

def _mel_spaced(low_hz: float, high_hz: float, count: int) -> np.ndarray:
    """``count`` frequencies (Hz) evenly spaced on the HTK mel scale."""
    low, high = (2595 * np.log10(1 + hz / 700) for hz in (low_hz, high_hz))
    return 700 * (10 ** (np.linspace(low, high, count) / 2595) - 1)


_SLOTS = _mel_spaced(300, 4800, 20)  # formant grid; 4 % shifts stay within a slot's width
_NOISE_FILES = {"white_noise": 0.0, "pink_noise": 1.0, "brown_noise": 2.0, "mains_hum": None}
_NOISE_RMS = 0.02  # level of the background-noise files and the centre of _silence_ clips
_BATCH = 256


@dataclass(frozen=True)
class Speakers:
    """Speaker ids with their traits; ``split[i]`` is the list a speaker's clips go to."""
    ids: list[str]
    split: list[str]  # "train" | "valid" | "test"
    f0: np.ndarray  # Hz
    scale: np.ndarray  # formant and pitch factor, 0.96–1.04
    gain_db: np.ndarray


def word_signatures(words=WORDS_V2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{word: (formant Hz (3,), amplitudes (3,))}``: the same for every seed.

    Combinations of grid slots are drawn in a fixed order; one is kept when it shares at
    most one slot with every word before it, so words differ in at least two bands.
    """
    rng = np.random.default_rng(20170801)  # fixed: the "language" does not change with seed
    combos = [c for c in itertools.combinations(range(_SLOTS.size), 3)
              if c[1] - c[0] >= 2 and c[2] - c[1] >= 2]
    kept: list[set[int]] = []
    for index in rng.permutation(len(combos)):
        if all(len(set(combos[index]) & other) <= 1 for other in kept):
            kept.append(set(combos[index]))
    amps = rng.uniform(0.4, 1.0, (len(kept), 3))
    return {word: (_SLOTS[sorted(slots)], amps[i])
            for i, (word, slots) in enumerate(zip(words, kept))}


def speaker_split(speaker: str, valid_percent: int = 10, test_percent: int = 10) -> str:
    """The list a speaker belongs to, from a hash of the id as in the real corpus."""
    bucket = int(hashlib.sha1(speaker.encode()).hexdigest(), 16) % 100
    if bucket < valid_percent:
        return "valid"
    return "test" if bucket < valid_percent + test_percent else "train"


def make_speakers(rng: np.random.Generator, count: int, taken=frozenset(),
                  quotas: dict[str, int] | None = None, spread: float = 0.04) -> Speakers:
    """``count`` new 8-hex-digit speakers; ``quotas`` fixes how many hash to each split;
    each speaker's formants and pitch are scaled by a factor in ``1 ± spread``."""
    quotas = dict(quotas or {"train": count, "valid": count, "test": count})
    ids, split = [], []
    while len(ids) < count:
        speaker = f"{int(rng.integers(0, 2 ** 32)):08x}"
        bucket = speaker_split(speaker)
        if speaker not in taken and speaker not in ids and quotas[bucket] > 0:
            quotas[bucket] -= 1
            ids.append(speaker)
            split.append(bucket)
    return Speakers(ids, split, f0=np.exp(rng.uniform(np.log(90), np.log(250), count)),
                    scale=rng.uniform(1 - spread, 1 + spread, count),
                    gain_db=rng.uniform(-6, 6, count))


def _split_quotas(count: int) -> dict[str, int]:
    """About 10 % valid and 10 % test speakers, at least one each."""
    if count < 3:
        raise ValueError(f"speakers={count}: need at least 3 (train, valid and test)")
    held_out = max(1, round(count / 10))
    return {"valid": held_out, "test": held_out, "train": count - 2 * held_out}


def render_words(rng: np.random.Generator, formants: np.ndarray, amps: np.ndarray,
                 f0: np.ndarray, gain_db: np.ndarray, snr_db=(10, 25)) -> np.ndarray:
    """``(B, 16000)`` float32 one-second clips of B words, background noise included at a
    signal-to-noise ratio drawn from ``snr_db`` (low, high) dB.

    ``formants``/``amps`` are (B, 3) per clip (speaker scaling already applied), ``f0`` and
    ``gain_db`` (B,). A clip is shaped noise: formant envelope × harmonic comb at ``f0``.
    """
    count, samples = f0.size, SAMPLE_RATE
    freqs = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE).astype(np.float32)[None, :]
    shape = _harmonic_comb(freqs, f0.astype(np.float32)[:, None])
    shape *= _formant_envelope(freqs, formants.astype(np.float32), amps.astype(np.float32))
    spectrum = _white_spectrum(rng, count, freqs.size) * shape
    voice = _unit_rms(np.fft.irfft(spectrum, samples).astype(np.float32))
    voice *= _word_envelope(rng, count, samples)
    snr = rng.uniform(*snr_db, (count, 1))
    noise = colored_noise(rng, count, samples, rng.uniform(0, 2, count))
    noise *= (10 ** (-snr / 20)).astype(np.float32)
    gain = (0.1 * 10 ** (gain_db[:, None] / 20)).astype(np.float32)
    return gain * (voice + noise)


def _formant_envelope(freqs: np.ndarray, formants: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """(B, F) sum of Gaussian bands at ``formants`` (B, 3) Hz, each 8 % of its centre wide."""
    envelope = np.zeros((formants.shape[0], freqs.shape[1]), dtype=np.float32)
    for k in range(formants.shape[1]):
        centre, weight = formants[:, k, None], amps[:, k, None]
        envelope += weight * np.exp(-0.5 * ((freqs - centre) / (0.08 * centre)) ** 2)
    return envelope


def _harmonic_comb(freqs: np.ndarray, f0: np.ndarray) -> np.ndarray:
    """(B, F) narrow peaks at the multiples of ``f0`` (B, 1) over a small breath floor."""
    to_harmonic = freqs - f0 * np.round(freqs / f0)
    return np.exp(-0.5 * (to_harmonic / np.float32(12)) ** 2) + np.float32(0.05)


def _word_envelope(rng: np.random.Generator, count: int, samples: int) -> np.ndarray:
    """(B, samples) gains: a 0.35–0.6 s word with smooth 15 % edges at a random onset."""
    duration = rng.uniform(0.35, 0.6, (count, 1)).astype(np.float32) * SAMPLE_RATE
    onset = rng.uniform(0.02, 0.3, (count, 1)).astype(np.float32) * SAMPLE_RATE
    position = (np.arange(samples, dtype=np.float32)[None, :] - onset) / duration
    edge = np.clip(np.minimum(position, 1 - position) / np.float32(0.15), 0, 1)
    return edge * edge * (3 - 2 * edge)  # smoothstep: a cosine ramp's shape, without cos


def _clip_lengths(rng: np.random.Generator, count: int) -> np.ndarray:
    """Samples per clip: most last 1 s, one in five is cut to 0.7–1.0 s."""
    short = rng.random(count) < 0.2
    seconds = np.where(short, rng.uniform(0.7, 1.0, count), 1.0)
    return np.round(seconds * SAMPLE_RATE).astype(int)


def _write_clips(rng: np.random.Generator, plan: list[tuple[Path, str, int]],
                 speakers: Speakers, snr_db=(10, 25)) -> None:
    """Render and write ``plan`` = [(wav path, word, speaker index)] in batches.

    Creating files is slow on many file systems and releases the GIL, so a few threads write
    one batch while the next is rendered (at most two batches in memory).
    """
    signatures = word_signatures()
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = []
        for first in range(0, len(plan), _BATCH):
            batch = plan[first:first + _BATCH]
            clips = _render_batch(rng, [(word, who) for _, word, who in batch], speakers,
                                  signatures, snr_db)
            for job in pending:
                job.result()  # re-raises a failed write
            pending = [pool.submit(write_wav, path, clip) for (path, _, _), clip
                       in zip(batch, clips)]
        for job in pending:
            job.result()


def _render_batch(rng: np.random.Generator, items: list[tuple[str, int]], speakers: Speakers,
                  signatures, snr_db=(10, 25)) -> list[np.ndarray]:
    """Clips for [(word, speaker index)], each cut to its own length."""
    who = np.array([speaker for _, speaker in items])
    scale = speakers.scale[who] * rng.uniform(0.99, 1.01, who.size)  # within-speaker jitter
    formants = np.stack([signatures[word][0] for word, _ in items]) * scale[:, None]
    amps = np.stack([signatures[word][1] for word, _ in items])
    gain_db = speakers.gain_db[who] + rng.uniform(-3, 3, who.size)
    clips = render_words(rng, formants, amps, speakers.f0[who] * scale, gain_db, snr_db)
    return [clip[:length] for clip, length in zip(clips, _clip_lengths(rng, who.size))]


def _noise(rng: np.random.Generator, exponent: float | None, samples: int) -> np.ndarray:
    """Unit-RMS noise of one :data:`_NOISE_FILES` kind: 1/f**exponent, or hum for None."""
    return hum(rng, samples) if exponent is None else colored_noise(rng, 1, samples,
                                                                    exponent)[0]


def _write_noise_folder(rng: np.random.Generator, folder: Path, seconds: float) -> None:
    """``_background_noise_/``: one ``seconds``-long wav per kind of noise, and a README."""
    samples = int(round(seconds * SAMPLE_RATE))
    for name, exponent in _NOISE_FILES.items():
        write_wav(folder / f"{name}.wav", _NOISE_RMS * _noise(rng, exponent, samples))
    _stub(folder / "README.md", "background noise",
          "Long noise recordings: white, pink and brown noise and mains hum. Recipes cut them "
          "into 1-s clips for the _silence_ class.")


def _write_release(root: Path, rng: np.random.Generator, words, speakers: Speakers,
                   utterances: int, noise_secs: float, snr_db=(10, 25)) -> Path:
    """One ``speech_commands_v0.0x`` root: word folders, both lists, noise, stubs."""
    fresh_root(root)
    plan = [(root / word / f"{speaker}_nohash_{n}.wav", word, i)
            for word in words for i, speaker in enumerate(speakers.ids)
            for n in range(utterances)]
    _write_clips(rng, plan, speakers, snr_db)
    for split, list_name in (("valid", VALID_LIST), ("test", TEST_LIST)):
        lines = sorted(f"{path.parent.name}/{path.name}" for path, _, i in plan
                       if speakers.split[i] == split)
        (root / list_name).write_text("".join(line + "\n" for line in lines))
    _write_noise_folder(rng, root / NOISE_DIR, noise_secs)
    _stub(root / "README.md", root.name,
          f"{len(words)} words x {len(speakers.ids)} speakers. Same layout as Google Speech "
          "Commands; the audio is synthetic (formant-shaped noise), not speech.")
    _stub(root / "LICENSE", "no licence needed", "Generated data; use it freely.")
    return root


def _write_test_set(root: Path, rng: np.random.Generator, speakers: Speakers,
                    utterances: int, snr_db=(10, 25)) -> Path:
    """``speech_commands_test_set_v0.01``: 10 words, ``_unknown_`` and ``_silence_``."""
    fresh_root(root)
    others = [w for w in WORDS_V1 if w not in SUPERB_WORDS]
    plan = [(root / word / f"{speaker}_nohash_{n}.wav", word, i)
            for word in SUPERB_WORDS for i, speaker in enumerate(speakers.ids)
            for n in range(utterances)]
    plan += [(root / UNKNOWN / f"{speaker}_nohash_{n}.wav", str(rng.choice(others)), i)
             for i, speaker in enumerate(speakers.ids) for n in range(utterances)]
    _write_clips(rng, plan, speakers, snr_db)
    _write_silence_clips(rng, root / SILENCE, len(speakers.ids) * utterances)
    _stub(root / "README.md", root.name, "Same layout as the Speech Commands v0.01 test set.")
    return root


def _write_silence_clips(rng: np.random.Generator, folder: Path, count: int) -> None:
    """``count`` 1-s clips of the background-noise kinds in turn, at -6 to +3 dB of their
    level. Named ``<kind>_<k>.wav``: like the real ones, not ``<speaker>_nohash_<n>``."""
    kinds = list(_NOISE_FILES.items())
    for k in range(count):
        name, exponent = kinds[k % len(kinds)]
        level = _NOISE_RMS * 10 ** (rng.uniform(-6, 3) / 20)
        write_wav(folder / f"{name}_{k:03d}.wav", level * _noise(rng, exponent, SAMPLE_RATE))


def synthesize_speech_commands(out_dir, speakers=40, seed=0, version="v0.01", noise_secs=8.0,
                               utterances_per_word=1, snr_db=(10, 25),
                               speaker_spread=0.04) -> dict[str, Path]:
    """Write synthetic Speech Commands roots under ``out_dir``; return them by name.

    Difficulty: each clip's noise is at an SNR drawn from ``snr_db`` (low, high) dB, and each
    speaker's formants and pitch are scaled by ``1 ± speaker_spread``; the defaults make an
    easy corpus, ``snr_db=(-5, 10), speaker_spread=0.12`` one where heads differ.

    ``version`` ``"v0.01"`` writes ``speech_commands_v0.01`` and
    ``speech_commands_test_set_v0.01`` (keys ``"v0.01"``, ``"test_v0.01"``), ``"v0.02"``
    writes ``speech_commands_v0.02`` (key ``"v0.02"``), ``"both"`` all three. Every speaker
    says every word ``utterances_per_word`` times; the test set has ``max(2, speakers // 4)``
    other speakers. Each root's content depends only on ``seed``, not on ``version``.

    >>> import shutil, tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> roots = synthesize_speech_commands(tmp, speakers=3, version="both")
    >>> {name: root.name for name, root in roots.items()}  # doctest: +NORMALIZE_WHITESPACE
    {'v0.01': 'speech_commands_v0.01', 'test_v0.01': 'speech_commands_test_set_v0.01',
     'v0.02': 'speech_commands_v0.02'}
    >>> shutil.rmtree(tmp)
    """
    if version not in ("v0.01", "v0.02", "both"):
        raise ValueError(f"version={version!r}; choose one of: v0.01, v0.02, both")
    if utterances_per_word < 1 or not noise_secs > 0:
        raise ValueError("utterances_per_word must be >= 1 and noise_secs > 0")
    out = Path(out_dir)
    # One stream per root, so a root's content does not depend on which others are written.
    streams = [np.random.default_rng([seed, stream]) for stream in range(4)]
    talkers = make_speakers(streams[0], speakers, quotas=_split_quotas(speakers),
                            spread=speaker_spread)
    held_out = make_speakers(streams[0], max(2, speakers // 4), taken=set(talkers.ids),
                             spread=speaker_spread)
    roots = {}
    if version in ("v0.01", "both"):
        roots["v0.01"] = _write_release(out / "speech_commands_v0.01", streams[1], WORDS_V1,
                                        talkers, utterances_per_word, noise_secs, snr_db)
        roots["test_v0.01"] = _write_test_set(out / "speech_commands_test_set_v0.01",
                                              streams[2], held_out, utterances_per_word,
                                              snr_db)
    if version in ("v0.02", "both"):
        roots["v0.02"] = _write_release(out / "speech_commands_v0.02", streams[3], WORDS_V2,
                                        talkers, utterances_per_word, noise_secs, snr_db)
    return roots


def _speech_commands_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speakers", type=int, default=40, help="speakers in the main folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", choices=("v0.01", "v0.02", "both"), default="v0.01")
    parser.add_argument("--noise-secs", type=float, default=8.0,
                        help="length of each _background_noise_ wav, seconds")
    parser.add_argument("--utterances-per-word", type=int, default=1)
    parser.add_argument("--snr-db", type=float, nargs=2, default=(10, 25), metavar=("LOW", "HIGH"),
                        help="range of each clip's signal-to-noise ratio, dB")
    parser.add_argument("--speaker-spread", type=float, default=0.04,
                        help="speakers scale formants and pitch by 1 +- this")


def _speech_commands_run(args: argparse.Namespace) -> dict[str, Path]:
    return synthesize_speech_commands(args.out_dir, args.speakers, args.seed, args.version,
                                      args.noise_secs, args.utterances_per_word,
                                      tuple(args.snr_db), args.speaker_spread)


# ---------------------------------------------------------------- VoxCeleb1

_VOX_ROOTS = {"dev_root": "vox1_dev_wav", "test_root": "vox1_test_wav"}
_VOX_F0 = np.exp(np.linspace(np.log(85), np.log(255), 8))  # speaker pitch grid, Hz
_VOX_TRACT = np.linspace(0.88, 1.14, 5)  # vocal-tract grid: a factor on every formant
_VOX_BANDS = _mel_spaced(250, 5000, 6)  # centres of the speaker-colour bands, Hz
_VOX_BAND_DB = np.linspace(-7.5, 7.5, 5)  # the gain levels of those bands
_VOX_MIN_STEPS = 5  # least colour difference between two speakers, in band-level steps
_VOX_SEGMENT = 4096  # samples rendered per phone: the longest phone plus both fades
_VOX_FADE = 240  # half of the 30-ms cross-fade between consecutive phones, samples
_VOX_PHONE_SECS = (0.06, 0.18)
_VOX_PARTNERS = 2  # target and non-target trials per test utterance
_VOX_CHUNK = 64  # utterances rendered together (bounds memory on large corpora)
_YOUTUBE_ALPHABET = np.array(list(string.ascii_letters + string.digits + "-_"))
_VOX_LISTS = (META_FILE, IDEN_SPLIT_FILE, "veri_test2.txt", "veri_test.txt")
_NATIONALITIES = ("USA", "UK", "India", "Canada", "Ireland", "Australia", "Germany", "Norway")


@dataclass(frozen=True)
class Voices:
    """Speakers' stable traits: grid cells, any two audibly different (:func:`make_voices`)."""
    ids: list[str]
    f0: np.ndarray  # Hz
    tract: np.ndarray  # formant factor
    band_db: np.ndarray  # (N, bands) gain of each colour band, dB


@dataclass(frozen=True)
class _Utterance:
    path: Path
    speaker: int  # index into Voices
    video: int  # index of the recording session: its channel
    samples: int


def voxceleb1_speaker_ids(dev: int, test: int) -> tuple[list[str], list[str]]:
    """Dev ids from id10001 upward around the test block; test ids from id10270."""
    if not 0 <= test <= len(TEST_SPEAKERS):
        raise ValueError(f"test_speakers={test}: VoxCeleb1 has {len(TEST_SPEAKERS)} at most")
    dev_ids = (f"id{n}" for n in itertools.count(10001) if f"id{n}" not in TEST_SPEAKERS)
    return list(itertools.islice(dev_ids, dev)), list(TEST_SPEAKERS[:test])


def make_voices(rng: np.random.Generator, ids: list[str]) -> Voices:
    """Draw a grid cell per speaker: (pitch, vocal tract, one level per colour band).

    A cell is kept when its colour levels differ from every kept cell's by at least
    :data:`_VOX_MIN_STEPS` grid steps in all (pitch and tract barely move a mean spectrum, so
    they do not count); after 1000 refused draws the last one is kept (very large counts).
    """
    levels = np.array([_VOX_F0.size, _VOX_TRACT.size] + [_VOX_BAND_DB.size] * _VOX_BANDS.size)
    kept = np.empty((0, levels.size), dtype=int)
    while len(kept) < len(ids):
        for _ in range(1000):
            cell = rng.integers(0, levels)
            if not len(kept) or np.abs(kept[:, 2:] - cell[2:]).sum(1).min() >= _VOX_MIN_STEPS:
                break
        kept = np.vstack([kept, cell])
    return Voices(list(ids), _VOX_F0[kept[:, 0]], _VOX_TRACT[kept[:, 1]],
                  _VOX_BAND_DB[kept[:, 2:]])


def phone_inventory() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(formants (P, 3) Hz, amplitudes (P, 3), voiced (P,))`` of 12 vowels, 4 fricatives.

    The same for every seed and every speaker: phones carry the content, not the voice.
    """
    rng = np.random.default_rng(19930611)
    vowels = np.stack([rng.uniform(300, 850, 12), rng.uniform(900, 2300, 12),
                       rng.uniform(2400, 3300, 12)], axis=1)
    fricatives = np.sort(rng.uniform(2500, 7000, (4, 3)), axis=1)
    vowel_amps = np.stack([np.ones(12), rng.uniform(0.4, 0.9, 12),
                           rng.uniform(0.2, 0.6, 12)], axis=1)
    return (np.vstack([vowels, fricatives]), np.vstack([vowel_amps, rng.uniform(0.5, 1, (4, 3))]),
            np.arange(16) < 12)


_PHONES = phone_inventory()


def _octaves(freqs: np.ndarray, centre) -> np.ndarray:
    return np.log2(np.maximum(freqs, 20.0) / centre)


def _colour_db(freqs: np.ndarray, band_db: np.ndarray) -> np.ndarray:
    """(N, F) speaker colour: half-octave-wide bumps at :data:`_VOX_BANDS`, dB."""
    bumps = np.exp(-0.5 * (_octaves(freqs[:, None], _VOX_BANDS) / 0.35) ** 2)  # (F, bands)
    return band_db @ bumps.T


def _channel_db(rng: np.random.Generator, count: int, freqs: np.ndarray) -> np.ndarray:
    """(count, F) response of ``count`` recording sessions, dB.

    A tilt of ±1 dB/octave around 1 kHz, three random ±3-dB one-octave bumps and a
    12 dB/octave low cut at 50–150 Hz: microphone and room, not speaker.
    """
    response = rng.uniform(-1, 1, (count, 1)) * _octaves(freqs, 1000.0)
    for _ in range(3):
        centre = np.exp(rng.uniform(np.log(200), np.log(6000), (count, 1)))
        response += rng.uniform(-3, 3, (count, 1)) * np.exp(-0.5 * _octaves(freqs, centre) ** 2)
    low_cut = np.exp(rng.uniform(np.log(50), np.log(150), (count, 1)))
    return response - 12 * np.maximum(0, -_octaves(freqs, low_cut))


def _phone_plan(rng: np.random.Generator, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(onsets, lengths) in samples of the phones filling one utterance.

    60–180 ms phones follow each other, one in ten after a 0.1–0.3 s pause; every phone,
    fades included, fits inside the utterance.
    """
    low, high = (round(s * SAMPLE_RATE) for s in _VOX_PHONE_SECS)
    count = samples // low + 2
    lengths = rng.integers(low, high + 1, count)
    gaps = np.where(rng.random(count) < 0.1, rng.integers(1600, 4800, count), 0)
    lead = int(rng.integers(2 * _VOX_FADE, 2400))
    onsets = lead + np.cumsum(gaps + lengths) - lengths
    keep = onsets + lengths + _VOX_FADE <= samples
    return onsets[keep], lengths[keep]


_FADE_IN = np.sin(np.linspace(0, np.pi / 2, 2 * _VOX_FADE, dtype=np.float32)) ** 2


def _voice_shapes(voices: Voices, speakers: np.ndarray) -> np.ndarray:
    """(len(speakers), phones, F) linear spectral envelopes: every phone's formants moved by
    the speaker's vocal tract, times the speaker's colour; on the phone FFT grid."""
    formants, amps, _ = _PHONES
    freqs = np.fft.rfftfreq(_VOX_SEGMENT, 1 / SAMPLE_RATE).astype(np.float32)
    tract = voices.tract[speakers][:, None, None]
    envelope = _formant_envelope(freqs[None, :],
                                 (formants[None] * tract).reshape(-1, 3).astype(np.float32),
                                 np.tile(amps, (speakers.size, 1)).astype(np.float32))
    colour = 10 ** (_colour_db(freqs, voices.band_db[speakers]) / 20)
    shapes = (envelope + np.float32(0.08)).reshape(speakers.size, len(formants), -1)
    return shapes * colour[:, None, :].astype(np.float32)


def _render_phones(rng: np.random.Generator, shapes: np.ndarray, voiced: np.ndarray,
                   f0: np.ndarray) -> np.ndarray:
    """(B, _VOX_SEGMENT) phones: noise through ``shapes`` (B, F), times a harmonic comb at
    ``f0`` Hz where ``voiced`` (vowels; fricatives stay noise)."""
    freqs = np.fft.rfftfreq(_VOX_SEGMENT, 1 / SAMPLE_RATE).astype(np.float32)[None, :]
    comb = _harmonic_comb(freqs, f0.astype(np.float32)[:, None])
    shapes = shapes * np.where(voiced[:, None], comb, np.float32(1))
    spectrum = _white_spectrum(rng, shapes.shape[0], freqs.size) * shapes
    return np.fft.irfft(spectrum, _VOX_SEGMENT).astype(np.float32)


def _faded(phone: np.ndarray, span: int) -> np.ndarray:
    """The first ``span`` samples of ``phone`` with 30-ms sin² fades, at unit RMS.

    Neighbouring phones overlap by one fade, where their fades sum to one.
    """
    piece = phone[:span].copy()
    piece[:_FADE_IN.size] *= _FADE_IN
    piece[span - _FADE_IN.size:] *= _FADE_IN[::-1]
    return piece / np.sqrt(np.dot(piece, piece) / span + 1e-12)


def _render_utterances(rng: np.random.Generator, batch: list[_Utterance], voices: Voices,
                       channels: np.ndarray, noise: np.ndarray) -> list[np.ndarray]:
    """Float audio of each utterance: phones overlap-added, then session noise at its SNR.

    ``channels`` (sessions, F) is each session's linear response; ``noise`` (sessions, 2)
    its (SNR dB, noise colour exponent).
    """
    plans = [_phone_plan(rng, u.samples) for u in batch]
    owner = np.concatenate([np.full(onsets.size, i) for i, (onsets, _) in enumerate(plans)])
    lengths = np.concatenate([lengths for _, lengths in plans])
    talkers, speaker = np.unique([batch[i].speaker for i in owner], return_inverse=True)
    video = np.array([u.video for u in batch])[owner]
    # Intonation: each utterance has its own pitch level, each phone moves ±8 % around it.
    f0 = voices.f0[talkers[speaker]] * np.exp(rng.normal(0, 0.03, len(batch))[owner]
                                              + rng.uniform(-0.08, 0.08, owner.size))
    phones = rng.integers(0, len(_PHONES[2]), owner.size)
    shapes = _voice_shapes(voices, talkers)[speaker, phones] * channels[video]
    rendered = _render_phones(rng, shapes, _PHONES[2][phones], f0)
    loud = np.where(_PHONES[2][phones], 1.0, 0.4).astype(np.float32)
    audio = [np.zeros(u.samples, dtype=np.float32) for u in batch]
    starts = np.concatenate([onsets for onsets, _ in plans]) - _VOX_FADE
    for k, (i, start, span) in enumerate(zip(owner, starts, lengths + 2 * _VOX_FADE)):
        audio[i][start:start + span] += loud[k] * _faded(rendered[k], span)
    return [_add_session_noise(rng, clip, *noise[u.video]) for clip, u in zip(audio, batch)]


def _add_session_noise(rng: np.random.Generator, voice: np.ndarray, snr_db: float,
                       exponent: float) -> np.ndarray:
    """``voice`` plus coloured noise ``snr_db`` below it, at a random level about -26 dBFS."""
    voice = _unit_rms(voice)
    # Utterance lengths are arbitrary; an FFT of a 5-smooth length is several times faster.
    noise = colored_noise(rng, 1, _smooth_length(voice.size), exponent)[0, :voice.size]
    mixed = voice + 10 ** (-snr_db / 20) * noise
    return np.float32(0.05 * 10 ** (rng.uniform(-4, 4) / 20)) * mixed


def _smooth_length(n: int) -> int:
    """The smallest 2**a * 3**b * 5**c >= ``n``."""
    best = 1 << max(0, n - 1).bit_length()
    for fives in (5 ** c for c in range(12) if 5 ** c <= best):
        for threes in (3 ** b for b in range(20) if fives * 3 ** b <= best):
            length = fives * threes
            length <<= max(0, (n - 1) // length).bit_length()
            best = min(best, length)
    return best


def _youtube_ids(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct 11-character ids in YouTube's alphabet."""
    ids: list[str] = []
    while len(ids) < count:
        candidate = "".join(rng.choice(_YOUTUBE_ALPHABET, 11))
        if candidate not in ids:
            ids.append(candidate)
    return ids


def _vox_plan(rng: np.random.Generator, roots: dict[str, Path], dev: list[str],
              test: list[str], videos: int, utterances: int, secs: tuple[float, float]
              ) -> list[_Utterance]:
    """Every utterance to write, speaker by speaker (dev first), video by video."""
    plan = []
    sessions = itertools.count()
    for speaker, spk in enumerate(dev + test):
        wav = roots["dev_root" if speaker < len(dev) else "test_root"] / "wav" / spk
        for video_id, session in zip(_youtube_ids(rng, videos), sessions):
            lengths = np.round(rng.uniform(*secs, utterances) * SAMPLE_RATE).astype(int)
            plan += [_Utterance(wav / video_id / f"{n:05d}.wav", speaker, session, int(samples))
                     for n, samples in enumerate(lengths, 1)]
    return plan


def _write_utterances(rng: np.random.Generator, plan: list[_Utterance], voices: Voices) -> None:
    """Render ``plan`` in chunks; threads write one chunk while the next is rendered."""
    sessions = plan[-1].video + 1
    freqs = np.fft.rfftfreq(_VOX_SEGMENT, 1 / SAMPLE_RATE)
    channels = (10 ** (_channel_db(rng, sessions, freqs) / 20)).astype(np.float32)
    noise = np.stack([rng.uniform(15, 30, sessions), rng.uniform(1, 2, sessions)], axis=1)
    with ThreadPoolExecutor(max_workers=4) as pool:
        pending = []
        for first in range(0, len(plan), _VOX_CHUNK):
            batch = plan[first:first + _VOX_CHUNK]
            clips = _render_utterances(rng, batch, voices, channels, noise)
            for job in pending:
                job.result()  # re-raises a failed write
            pending = [pool.submit(write_wav, u.path, clip) for u, clip in zip(batch, clips)]
        for job in pending:
            job.result()


def _iden_code(video: int, videos: int) -> int:
    """A speaker's last video is identification test (3), the one before dev (2) when it has
    three or more; the rest train (1)."""
    if videos > 1 and video == videos - 1:
        return 3
    return 2 if videos > 2 and video == videos - 2 else 1


def _write_vox_lists(out: Path, rng: np.random.Generator, plan: list[_Utterance],
                     voices: Voices, dev_count: int, videos: int) -> None:
    """``vox1_meta.csv``, ``iden_split.txt`` and the test trials next to the two roots."""
    rel = [f"{u.path.parent.parent.name}/{u.path.parent.name}/{u.path.name}" for u in plan]
    nations = rng.choice(len(_NATIONALITIES), len(voices.ids))
    meta = [META_HEADER] + [
        "\t".join((spk, f"Synthetic_{spk}", "f" if voices.f0[i] >= 160 else "m",
                   _NATIONALITIES[nations[i]], "dev" if i < dev_count else "test"))
        for i, spk in enumerate(voices.ids)]
    (out / META_FILE).write_text("\n".join(meta) + "\n")
    iden = sorted(f"{_iden_code(u.video % videos, videos)} {path}" for u, path in zip(plan, rel))
    (out / IDEN_SPLIT_FILE).write_text("\n".join(iden) + "\n")
    test = [(path, u.speaker, u.video) for u, path in zip(plan, rel) if u.speaker >= dev_count]
    lines = [f"{label} {a} {b}" for a, b, label in _test_trials(rng, test)]
    for name in ("veri_test2.txt", "veri_test.txt"):
        (out / name).write_text("\n".join(lines) + "\n")


def _test_trials(rng: np.random.Generator, utts: list[tuple[str, int, int]]
                 ) -> list[tuple[str, str, int]]:
    """Balanced trials ``(path1, path2, label)``, sorted: for each test utterance up to
    :data:`_VOX_PARTNERS` same-speaker partners (another video when the speaker has several)
    and as many other-speaker partners; no pair twice, in either order."""
    by_speaker: dict[int, list[tuple[str, int]]] = {}
    for path, spk, video in utts:
        by_speaker.setdefault(spk, []).append((path, video))
    used: set[frozenset] = set()
    trials: dict[int, list] = {1: [], 0: []}
    for path, spk, video in utts:
        multi = len({v for _, v in by_speaker[spk]}) > 1
        same = [p for p, v in by_speaker[spk] if p != path and not (multi and v == video)]
        # Random draws, not a list of every other speaker's utterance: linear in the corpus.
        others = [utts[k][0] for k in rng.integers(0, len(utts), 20 * _VOX_PARTNERS)
                  if utts[k][1] != spk]
        for label, candidates in ((1, [same[k] for k in rng.permutation(len(same))]),
                                  (0, others)):
            fresh = [p for p in dict.fromkeys(candidates) if frozenset((path, p)) not in used]
            for partner in fresh[:_VOX_PARTNERS]:
                used.add(frozenset((path, partner)))
                trials[label].append((path, partner, label))
    count = min(len(trials[1]), len(trials[0]))  # balance: drop the surplus at random
    return sorted(trials[label][k] for label in (1, 0)
                  for k in rng.permutation(len(trials[label]))[:count])


def synthesize_voxceleb1(out_dir, speakers=16, test_speakers=8, videos=3, utterances=4,
                         min_secs=2.0, max_secs=5.0, seed=0) -> dict[str, Path]:
    """Write a synthetic VoxCeleb1 under ``out_dir``; return ``{"dev_root", "test_root",
    "trials_dir"}`` (the ``prepare_data`` keys to set).

    ``out_dir/vox1_dev_wav/wav/<id>/<video>/<nnnnn>.wav`` holds ``speakers`` dev speakers
    (id10001 upward, skipping the test block), ``out_dir/vox1_test_wav/wav/...`` the first
    ``test_speakers`` of id10270–id10309; each speaker has ``videos`` videos of
    ``utterances`` clips lasting ``min_secs``–``max_secs`` s. ``out_dir`` also gets
    ``vox1_meta.csv``, ``iden_split.txt`` and ``veri_test2.txt`` (= ``veri_test.txt``).

    >>> import shutil, tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> roots = synthesize_voxceleb1(tmp, speakers=2, test_speakers=2, videos=1,
    ...                              utterances=2, min_secs=0.5, max_secs=0.5)
    >>> wavs = sorted(roots["test_root"].rglob("*.wav"))
    >>> len(wavs), wavs[0].relative_to(tmp).parts[:3]
    (4, ('vox1_test_wav', 'wav', 'id10270'))
    >>> shutil.rmtree(tmp)
    """
    if speakers < 0 or test_speakers < 2 or videos < 1 or utterances < 1:
        raise ValueError("need speakers >= 0, test_speakers >= 2, videos >= 1, utterances >= 1")
    if videos * utterances < 2:
        raise ValueError("videos * utterances must be >= 2: target trials need two utterances")
    if not 0 < min_secs <= max_secs:
        raise ValueError(f"min_secs={min_secs}, max_secs={max_secs}: need 0 < min <= max")
    dev, test = voxceleb1_speaker_ids(speakers, test_speakers)
    out = Path(out_dir)
    roots = {key: out / name for key, name in _VOX_ROOTS.items()}
    _refuse_foreign_lists(out, roots["dev_root"])
    for key, root in roots.items():
        fresh_root(root)
        _stub(root / "README.md", root.name, "Same layout as VoxCeleb1; the audio is synthetic "
              "(formant-shaped noise with a speaker colour and a channel per video).")
    # Separate streams: the voices do not depend on the corpus size options.
    voice_rng, plan_rng, audio_rng = (np.random.default_rng([seed, 10 + k]) for k in range(3))
    voices = make_voices(voice_rng, dev + test)
    plan = _vox_plan(plan_rng, roots, dev, test, videos, utterances, (min_secs, max_secs))
    _write_utterances(audio_rng, plan, voices)
    _write_vox_lists(out, plan_rng, plan, voices, len(dev), videos)
    return {**roots, "trials_dir": out}


def _refuse_foreign_lists(out: Path, dev_root: Path) -> None:
    """Never overwrite real VoxCeleb1 list files: only ones written beside a synthetic root."""
    ours = (dev_root / "README.md").is_file() and \
        (dev_root / "README.md").read_text().startswith(_MARKER)
    foreign = [name for name in _VOX_LISTS if (out / name).exists()]
    if foreign and not ours:
        raise FileExistsError(f"{out} already holds {', '.join(foreign)} not written by "
                              "corpora.synthesize; choose another OUT_DIR")


def _voxceleb1_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speakers", type=int, default=16, help="dev (training) speakers")
    parser.add_argument("--test-speakers", type=int, default=8,
                        help="test speakers, from id10270 (2-40)")
    parser.add_argument("--videos", type=int, default=3, help="videos per speaker")
    parser.add_argument("--utterances", type=int, default=4, help="utterances per video")
    parser.add_argument("--min-secs", type=float, default=2.0, help="shortest utterance, s")
    parser.add_argument("--max-secs", type=float, default=5.0, help="longest utterance, s")
    parser.add_argument("--seed", type=int, default=0)


def _voxceleb1_run(args: argparse.Namespace) -> dict[str, Path]:
    return synthesize_voxceleb1(args.out_dir, args.speakers, args.test_speakers, args.videos,
                                args.utterances, args.min_secs, args.max_secs, args.seed)


# ---------------------------------------------------------------- registry and CLI

@dataclass(frozen=True)
class Synthesizer:
    """One corpus: its CLI options and the function writing it (returns its roots)."""
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Path]]


def _gtzan(name: str) -> Callable:
    """A function of :mod:`corpora.synth_gtzan`, imported when called (it imports this
    module's helpers, so it cannot be imported while this module loads)."""
    def call(*args):
        from corpora import synth_gtzan
        return getattr(synth_gtzan, name)(*args)
    return call


SYNTHESIZERS: dict[str, Synthesizer] = {
    "speech_commands": Synthesizer("Google Speech Commands v0.01 / v0.02 and the v0.01 "
                                   "test set", _speech_commands_arguments, _speech_commands_run),
    "voxceleb1": Synthesizer("VoxCeleb1 dev and test archives, meta files and trial lists",
                             _voxceleb1_arguments, _voxceleb1_run),
    "csv_clips": Synthesizer(synth_clips.HELP, synth_clips.add_arguments, synth_clips.run),
    "gtzan": Synthesizer("GTZAN genres_original/: 10 genres of 22,050 Hz clips, an unreadable "
                         "jazz.00054.wav, exact duplicates", _gtzan("add_arguments"),
                         _gtzan("run")),
}


def main(argv=None) -> int:
    """Parse ``argv``, write the chosen corpus, print one ``name: root`` line per root."""
    parser = argparse.ArgumentParser(prog="python -m corpora.synthesize",
                                     description=__doc__.split("\n\n")[0])
    corpora = parser.add_subparsers(dest="corpus", required=True, metavar="CORPUS",
                                    help=", ".join(SYNTHESIZERS))
    for name, synthesizer in SYNTHESIZERS.items():
        sub = corpora.add_parser(name, help=synthesizer.help)
        sub.add_argument("out_dir", type=Path, metavar="OUT_DIR")
        synthesizer.add_arguments(sub)
    args = parser.parse_args(argv)
    try:
        roots = SYNTHESIZERS[args.corpus].run(args)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
    for name, root in roots.items():
        print(f"{name}: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
