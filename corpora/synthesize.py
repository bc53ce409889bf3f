"""Synthetic corpora written in the exact folder layouts of the real ones.

Demos and tests run the real corpus parsers on these folders, so nothing is downloaded::

    python -m corpora.synthesize speech_commands OUT_DIR [--speakers N] [--seed S]
        [--version v0.01|v0.02|both] [--noise-secs F]

A corpus is one entry of :data:`SYNTHESIZERS` (name → :class:`Synthesizer`); each entry
becomes a subcommand. Output is deterministic for a given seed. Audio is 16 kHz mono
16-bit PCM. A root that already exists is replaced only if it was written by this module.

Speech Commands audio: each word has a fixed spectral signature (three formant bands on a
mel-spaced grid; two words share at most one band) excited by a harmonic source, so even a
mean-pooled log-mel feature separates the words. Speakers differ in pitch (90–250 Hz), shift their formants by up to
±4 % and differ in loudness; each clip varies onset, length (0.7–1.0 s) and background
noise (10–25 dB SNR). ``_silence_`` is noise about 14 dB below a word's level.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile

from corpora.speech_commands import (NOISE_DIR, SILENCE, SUPERB_WORDS, TEST_LIST, UNKNOWN,
                                     VALID_LIST, WORDS_V1, WORDS_V2)

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
                  quotas: dict[str, int] | None = None) -> Speakers:
    """``count`` new 8-hex-digit speakers; ``quotas`` fixes how many hash to each split."""
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
                    scale=rng.uniform(0.96, 1.04, count), gain_db=rng.uniform(-6, 6, count))


def _split_quotas(count: int) -> dict[str, int]:
    """About 10 % valid and 10 % test speakers, at least one each."""
    if count < 3:
        raise ValueError(f"speakers={count}: need at least 3 (train, valid and test)")
    held_out = max(1, round(count / 10))
    return {"valid": held_out, "test": held_out, "train": count - 2 * held_out}


def render_words(rng: np.random.Generator, formants: np.ndarray, amps: np.ndarray,
                 f0: np.ndarray, gain_db: np.ndarray) -> np.ndarray:
    """``(B, 16000)`` float32 one-second clips of B words, background noise included.

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
    snr_db = rng.uniform(10, 25, (count, 1))
    noise = colored_noise(rng, count, samples, rng.uniform(0, 2, count))
    noise *= (10 ** (-snr_db / 20)).astype(np.float32)
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
                 speakers: Speakers) -> None:
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
                                  signatures)
            for job in pending:
                job.result()  # re-raises a failed write
            pending = [pool.submit(write_wav, path, clip) for (path, _, _), clip
                       in zip(batch, clips)]
        for job in pending:
            job.result()


def _render_batch(rng: np.random.Generator, items: list[tuple[str, int]], speakers: Speakers,
                  signatures) -> list[np.ndarray]:
    """Clips for [(word, speaker index)], each cut to its own length."""
    who = np.array([speaker for _, speaker in items])
    scale = speakers.scale[who] * rng.uniform(0.99, 1.01, who.size)  # within-speaker jitter
    formants = np.stack([signatures[word][0] for word, _ in items]) * scale[:, None]
    amps = np.stack([signatures[word][1] for word, _ in items])
    gain_db = speakers.gain_db[who] + rng.uniform(-3, 3, who.size)
    clips = render_words(rng, formants, amps, speakers.f0[who] * scale, gain_db)
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
                   utterances: int, noise_secs: float) -> Path:
    """One ``speech_commands_v0.0x`` root: word folders, both lists, noise, stubs."""
    fresh_root(root)
    plan = [(root / word / f"{speaker}_nohash_{n}.wav", word, i)
            for word in words for i, speaker in enumerate(speakers.ids)
            for n in range(utterances)]
    _write_clips(rng, plan, speakers)
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
                    utterances: int) -> Path:
    """``speech_commands_test_set_v0.01``: 10 words, ``_unknown_`` and ``_silence_``."""
    fresh_root(root)
    others = [w for w in WORDS_V1 if w not in SUPERB_WORDS]
    plan = [(root / word / f"{speaker}_nohash_{n}.wav", word, i)
            for word in SUPERB_WORDS for i, speaker in enumerate(speakers.ids)
            for n in range(utterances)]
    plan += [(root / UNKNOWN / f"{speaker}_nohash_{n}.wav", str(rng.choice(others)), i)
             for i, speaker in enumerate(speakers.ids) for n in range(utterances)]
    _write_clips(rng, plan, speakers)
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
                               utterances_per_word=1) -> dict[str, Path]:
    """Write synthetic Speech Commands roots under ``out_dir``; return them by name.

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
    talkers = make_speakers(streams[0], speakers, quotas=_split_quotas(speakers))
    held_out = make_speakers(streams[0], max(2, speakers // 4), taken=set(talkers.ids))
    roots = {}
    if version in ("v0.01", "both"):
        roots["v0.01"] = _write_release(out / "speech_commands_v0.01", streams[1], WORDS_V1,
                                        talkers, utterances_per_word, noise_secs)
        roots["test_v0.01"] = _write_test_set(out / "speech_commands_test_set_v0.01",
                                              streams[2], held_out, utterances_per_word)
    if version in ("v0.02", "both"):
        roots["v0.02"] = _write_release(out / "speech_commands_v0.02", streams[3], WORDS_V2,
                                        talkers, utterances_per_word, noise_secs)
    return roots


def _speech_commands_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speakers", type=int, default=40, help="speakers in the main folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", choices=("v0.01", "v0.02", "both"), default="v0.01")
    parser.add_argument("--noise-secs", type=float, default=8.0,
                        help="length of each _background_noise_ wav, seconds")
    parser.add_argument("--utterances-per-word", type=int, default=1)


def _speech_commands_run(args: argparse.Namespace) -> dict[str, Path]:
    return synthesize_speech_commands(args.out_dir, args.speakers, args.seed, args.version,
                                      args.noise_secs, args.utterances_per_word)


# ---------------------------------------------------------------- registry and CLI

@dataclass(frozen=True)
class Synthesizer:
    """One corpus: its CLI options and the function writing it (returns its roots)."""
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Path]]


SYNTHESIZERS: dict[str, Synthesizer] = {
    "speech_commands": Synthesizer("Google Speech Commands v0.01 / v0.02 and the v0.01 "
                                   "test set", _speech_commands_arguments, _speech_commands_run),
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
