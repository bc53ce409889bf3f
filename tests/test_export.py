"""``python -m framework export``: a trained KWS run as TorchScript and ONNX, reloaded in a
fresh process that cannot import the framework, equals the framework's outputs on test clips
of different lengths in one padded batch; the sidecar; an upstream that cannot export is named
in one line; an ASV run exports speaker embeddings."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from framework.audio.io import read_audio
from framework.inference import TrainedModels
from recipes.kws import KWS
from tests.conftest import FAST, corpus_overrides, merge

FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")

# Loads both files with torch.jit.load and onnxruntime alone (framework imports are blocked)
# and runs them on the padded batch in argv[1]; writes their outputs to argv[2].
CONSUMER = """
import sys
sys.modules["framework"] = None  # a consumer of the files has no framework
import numpy as np, onnxruntime, torch
batch = np.load(sys.argv[1], allow_pickle=False)
wav, lens = batch["wav"], batch["wav_len"]
scripted = torch.jit.load(sys.argv[3])
with torch.no_grad():
    ts = scripted(torch.from_numpy(wav), torch.from_numpy(lens)).numpy()
session = onnxruntime.InferenceSession(sys.argv[4], providers=["CPUExecutionProvider"])
onnx = session.run(None, {"wav": wav, "wav_len": lens})[0]
np.savez(sys.argv[2], torchscript=ts, onnx=onnx)
"""


def cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "framework", *args], capture_output=True,
                          text=True, **kwargs)


def cli_in_process(capsys, *args) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``python -m framework ARGS`` run in this process
    (it saves a process start and torch's import)."""
    from framework.cli import main

    capsys.readouterr()
    code = 0
    try:
        main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def train_kws(target, corpus, *dotlist, **overrides):
    KWS().run(dotlist=list(dotlist), target_dir=str(target), stop="train",
              **merge(merge(FAST, corpus_overrides(corpus)), overrides))
    return target


@pytest.fixture(scope="module")
def exported(tmp_path_factory, corpus):
    """A trained KWS run (fbank + mean_linear, 40 steps) exported in both formats through
    the command line: (target_dir, {format: stdout})."""
    target = train_kws(tmp_path_factory.mktemp("export") / "kws", corpus)
    printed = {}
    for fmt in FORMATS:
        done = cli("export", str(target), "--format", fmt)
        assert done.returncode == 0, done.stderr
        printed[fmt] = done.stdout
    return target, printed


def cut_clips(target, rate=16000) -> list[torch.Tensor]:
    """Five test clips cut to 1.0 s, 0.45 s, 0.1 s, 0.02 s (under one FFT window) and 0.7 s."""
    rows = pd.read_csv(target / "data" / "test.csv").tail(5).to_dict("records")
    cuts = (1.0, 0.45, 0.1, 0.02, 0.7)
    return [read_audio(r["wav_path"], r["start"], r["end"], rate)[:int(cut * rate)]
            for r, cut in zip(rows, cuts)]


def framework_outputs(problem, checkpoint, clips) -> np.ndarray:
    """The trained model through framework/inference.py, each clip alone (no padding)."""
    task, _, _ = TrainedModels(problem).load(checkpoint)
    with torch.no_grad():
        return np.stack([task.model({"wav": c[None], "wav_len": torch.tensor([len(c)])})[0]
                         .numpy() for c in clips])


def test_both_formats_reload_without_the_framework_and_match_it(exported, tmp_path):
    target, _ = exported
    clips = cut_clips(target)
    lens = np.array([len(c) for c in clips])
    assert len(set(lens)) == len(clips) and lens.min() < 512  # padding and the short path
    wav = np.zeros((len(clips), lens.max()), np.float32)
    for row, clip in enumerate(clips):
        wav[row, :len(clip)] = clip.numpy()
    np.savez(tmp_path / "batch.npz", wav=wav, wav_len=lens.astype(np.int64))
    folder = target / "export" / "valid_best"
    done = subprocess.run([sys.executable, "-c", CONSUMER, str(tmp_path / "batch.npz"),
                           str(tmp_path / "out.npz"), str(folder / FORMATS["torchscript"]),
                           str(folder / FORMATS["onnx"])], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "out.npz", allow_pickle=False)
    want = framework_outputs(KWS().attach(target), target / "train/checkpoints/valid_best.pt",
                             clips)
    assert want.shape == (5, 12) and np.abs(want).max() > 1  # trained logits, not zeros
    for fmt in FORMATS:
        # measured: 2.4e-7 (torchscript), 1.0e-6 (onnx) against logits up to ~4
        np.testing.assert_allclose(got[fmt], want, rtol=0, atol=1e-4 * np.abs(want).max())
        assert (got[fmt].argmax(1) == want.argmax(1)).all()


def test_sidecar_says_what_the_file_expects_and_the_check_it_passed(exported):
    target, printed = exported
    labels = json.loads((target / "encoder.json").read_text())
    for fmt, name in FORMATS.items():
        folder = target / "export" / "valid_best"
        side = json.loads((folder / f"{name}.json").read_text())
        assert (side["format"], side["file"], side["problem"]) == (fmt, name,
                                                                    "recipes.kws:KWS")
        assert side["labels"] == (labels if isinstance(labels, list) else labels["classes"])
        assert side["sample_rate"] == 16000
        assert [(i["name"], i["dtype"], i["shape"]) for i in side["inputs"]] == [
            ("wav", "float32", ["batch", "samples"]), ("wav_len", "int64", ["batch"])]
        assert side["outputs"][0]["shape"] == ["batch", 12]
        assert "logits" in side["outputs"][0]["meaning"]
        assert side["checkpoint"]["name"] == "valid_best"
        assert side["checkpoint"]["step"] in (20, 40)
        assert side["framework_version"].startswith("speech-recipes ")
        check = side["check"]
        assert len(check["clips"]) == 4 and min(c["samples"] for c in check["clips"]) < 512
        assert 0 <= check["max_abs_diff"] <= check["tolerance"] < 1e-2
        assert f"max abs difference from the framework {check['max_abs_diff']:.3g}" \
            in printed[fmt]
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            [n for n in FORMATS.values()] + [f"{n}.json" for n in FORMATS.values()])


def test_an_unknown_checkpoint_is_one_line_listing_the_available(exported, capsys):
    target, _ = exported
    code, _, err = cli_in_process(capsys, "export", str(target), "--format", "torchscript",
                                  "--checkpoint", "step-7")
    assert code == 2 and err.strip().splitlines() == [
        f"error: --checkpoint step-7: no such checkpoint in {target / 'train/checkpoints'}; "
        "choose valid_best, step-20, step-40, or a checkpoint file"]


def test_an_upstream_that_cannot_export_is_named_with_the_workaround(tmp_path, corpus,
                                                                     capsys):
    """A tiny random wav2vec2 (base: one call per distinct length) trained 4 steps: torch.export
    cannot follow its data-dependent frame count, and the traced file fails the check."""
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 64, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16}
    target = train_kws(tmp_path / "ssl", corpus, build_upstream={
        "name": "wav2vec2", "conf": {"random_init": True, "config": tiny}},
        train={"total_steps": 4, "eval_step": 4, "save_step": 4})
    for fmt, says in (("onnx", "the upstream (build_upstream.name=wav2vec2) cannot be "
                               "exported to onnx: "),
                      ("torchscript", "the exported torchscript model fails on the check's "
                                      "clips: ")):
        code, _, err = cli_in_process(capsys, "export", str(target), "--format", fmt)
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert errors[0].startswith(f"error: {says}")
        assert "upstream (build_upstream.name=wav2vec2)" in errors[0]
        assert "workaround: another upstream (fbank, mel and mfcc export" in errors[0]
        assert not (target / "export" / "valid_best" / FORMATS[fmt]).exists()
    assert not any((target / "export" / "valid_best").iterdir())  # no leftovers


def test_asv_exports_speaker_embeddings(tmp_path, capsys):
    from corpora.synthesize import synthesize_voxceleb1
    from recipes.asv import ASV
    from tests.test_asv import ASV_FAST

    corpus = synthesize_voxceleb1(tmp_path / "vox", speakers=8, test_speakers=4, videos=2,
                                  utterances=3, min_secs=1.5, max_secs=2.5)
    target = tmp_path / "asv"
    settings = merge(ASV_FAST, {"prepare_data": {**{k: str(v) for k, v in corpus.items()},
                                                 "valid_trials": 40},
                                "train": {"total_steps": 10, "eval_step": 10,
                                          "save_step": 10}})
    ASV().run(target_dir=str(target), stop="evaluate", **settings)
    code, out, err = cli_in_process(capsys, "export", str(target), "--format", "torchscript",
                                    "--out", str(tmp_path / "out"))
    assert code == 0 and "max abs difference from the framework" in out, err
    side = json.loads((tmp_path / "out" / "model.torchscript.pt.json").read_text())
    assert side["labels"] is None and side["outputs"][0]["shape"] == ["batch", 64]
    assert "cosine" in side["outputs"][0]["meaning"]
    valid = [r for r in json.loads((target / "evaluate/results.json").read_text())
             if (r["checkpoint"], r["split"]) == ("valid_best", "valid")]
    assert side["outputs"][0]["cosine_threshold"] == pytest.approx(
        valid[0]["metrics"]["cosine_eer_threshold"])
    assert side["check"]["clips"][0]["id"] == pd.read_csv(
        target / "data" / "veri_test2_utts.csv")["id"][0]  # the test list's utterances
    rows = pd.read_csv(target / "data" / "veri_test2_utts.csv").head(3)
    clips = [read_audio(path, sample_rate=16000)[:cut] for path, cut in
             zip(rows["wav_path"], (40000, 17000, 3000))]
    lens = torch.tensor([len(c) for c in clips])
    wav = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    with torch.no_grad():
        got = torch.jit.load(str(tmp_path / "out" / "model.torchscript.pt"))(wav, lens).numpy()
    want = framework_outputs(ASV().attach(target), target / "train/checkpoints/valid_best.pt",
                             clips)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * max(1, np.abs(want).max()))
