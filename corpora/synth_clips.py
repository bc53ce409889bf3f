"""A synthetic folder of clips in the Kaggle layout (the walkthrough's speech-command
classification)::

    python -m corpora.synthesize csv_clips OUT_DIR [--words 4] [--speakers 6]
        [--test-speakers 2] [--utterances 2] [--seed 0]

writes

==========================  ===================================================================
``audio_files/<hex>.wav``   every clip, training and test together in one flat folder
``train.csv``               ``file_name,target``: the labelled clips
``test.csv``                ``file_name``: the clips to predict (no labels)
``solution.csv``            ``file_name,target``: test.csv's true labels (Kaggle keeps these;
                            here they let a test score a submission)
``README.md``               says the folder is synthetic (and may be replaced by this module)
==========================  ===================================================================

The audio is the Speech Commands word synthesis of :mod:`corpora.synthesize` (16 kHz mono,
0.7-1 s): the first ``words`` words of v0.02's list (yes, no, up, down, ...), each said
``utterances`` times by every speaker. The test clips come from ``test_speakers`` other
speakers, so a submission is scored on voices training never heard. File names are random
and the rows shuffled: neither tells the label. Deterministic for a seed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from corpora.speech_commands import WORDS_V2

HELP = "a folder of clips with train.csv and test.csv (the Kaggle layout)"
AUDIO_DIR, FILE_COLUMN, LABEL_COLUMN = "audio_files", "file_name", "target"


def synthesize_csv_clips(out_dir, words=4, speakers=6, test_speakers=2, utterances=2,
                         seed=0) -> dict[str, Path]:
    """Write the folder (module docstring) at ``out_dir``; return the ``prepare_data`` keys
    to set, ``{"train_csv", "test_csv", "audio_dir"}``, and ``"solution_csv"``.

    >>> import shutil, tempfile
    >>> tmp = Path(tempfile.mkdtemp())
    >>> paths = synthesize_csv_clips(tmp / "clips", words=2, speakers=2, test_speakers=1,
    ...                              utterances=1)
    >>> paths["train_csv"].read_text().splitlines()[0], len(list(paths["audio_dir"].iterdir()))
    ('file_name,target', 6)
    >>> shutil.rmtree(tmp)
    """
    # Imported here, not at the top: corpora.synthesize imports this module to register it.
    from corpora.synthesize import _stub, _write_clips, fresh_root, make_speakers

    if not 2 <= words <= len(WORDS_V2) or min(speakers, test_speakers, utterances) < 1:
        raise ValueError(f"need 2 <= words <= {len(WORDS_V2)} and speakers, test_speakers, "
                         "utterances >= 1")
    root = fresh_root(Path(out_dir))
    rng = np.random.default_rng([seed, 20])
    talkers = make_speakers(rng, speakers + test_speakers)
    names = _file_names(rng, len(WORDS_V2[:words]) * len(talkers.ids) * utterances)
    plan = [(word, who) for word in WORDS_V2[:words] for who in range(len(talkers.ids))
            for _ in range(utterances)]
    order = rng.permutation(len(plan))  # rows and names shuffled: neither tells the label
    clips = [(root / AUDIO_DIR / names[k], *plan[i]) for k, i in enumerate(order)]
    _write_clips(rng, clips, talkers)
    rows = pd.DataFrame({FILE_COLUMN: names, LABEL_COLUMN: [word for _, word, _ in clips],
                         "test": [who >= speakers for _, _, who in clips]})
    paths = {"train_csv": root / "train.csv", "test_csv": root / "test.csv",
             "audio_dir": root / AUDIO_DIR, "solution_csv": root / "solution.csv"}
    columns = [FILE_COLUMN, LABEL_COLUMN]
    rows.loc[~rows["test"], columns].to_csv(paths["train_csv"], index=False)
    rows.loc[rows["test"], [FILE_COLUMN]].to_csv(paths["test_csv"], index=False)
    rows.loc[rows["test"], columns].to_csv(paths["solution_csv"], index=False)
    _stub(root / "README.md", "clips listed in CSV files",
          f"{words} words x {speakers} training and {test_speakers} test speakers x "
          f"{utterances} utterances, in the layout of a Kaggle audio-classification folder; "
          "the audio is synthetic (formant-shaped noise), not speech.")
    return paths


def _file_names(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct random ``<8 hex digits>.wav`` names."""
    names: dict[str, None] = {}
    while len(names) < count:
        names[f"{int(rng.integers(0, 2 ** 32)):08x}.wav"] = None
    return list(names)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--words", type=int, default=4, help="classes: the first N words")
    parser.add_argument("--speakers", type=int, default=6, help="speakers of train.csv")
    parser.add_argument("--test-speakers", type=int, default=2, help="speakers of test.csv")
    parser.add_argument("--utterances", type=int, default=2,
                        help="times each speaker says each word")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Path]:
    return synthesize_csv_clips(args.out_dir, args.words, args.speakers, args.test_speakers,
                                args.utterances, args.seed)
