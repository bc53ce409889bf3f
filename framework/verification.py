"""The speaker-verification family (ASV): speaker embeddings scored over trial lists.

Manifests (stage 0): ``train`` (``id, wav_path, spk, duration``) and, per trial list, the
trials (``id1, id2, wav_path1, wav_path2, label``) plus ``<split>_utts`` (``id, wav_path,
duration``: each utterance of the list once). ``valid`` trials come from held-out training
speakers: checkpoints are chosen on them, never on a test list.

Evaluation embeds every utterance once (not once per trial), in bounded-length windows, keeps
the embeddings on disk per checkpoint (a second evaluation reuses them), scores all trials as
one cosine operation, optionally AS-normalised against training-speaker embeddings, and
reports EER and minDCF (p_target 0.01, 0.05).
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from framework import config as cfglib
from framework.audio.dataset import AudioDataset, read_manifest
from framework.audio.segments import WindowDataset, collate_windows
from framework.inference import TrainedModels
from framework.embedding_store import EmbeddingStore
from framework.audio.io import screen_manifest
from framework.errors import AudioError, ConfigError, UserError
from framework.metrics.verification import as_norm, cosine_scores, eer, verification_metrics
from framework.models.losses import LOSSES
from framework.problem import Problem, manifest_outputs
from framework.registry import check_kwargs
from framework.report.summary import training_summary
from framework.report.verification import (best_by_valid_eer, split_counts,
                                           write_verification_report)
from framework.stages import StageResult, corpus_inputs, file_digest
from framework.tasks.verification import SpeakerVerificationTask

log = logging.getLogger("framework.verification")

DROPPED_TRIALS_JSON = "dropped_trials.json"  # stage 0: trials left out of each list, and why


class SpeakerVerification(Problem):
    """Speaker embeddings trained by speaker classification, evaluated on trial lists."""

    label_column = "spk"

    # -- stage 0 ---------------------------------------------------------------------------
    def stage_prepare_data(self, cfg) -> StageResult:
        data_dir = self.fresh_data_dir()
        manifests = self.prepare_data(cfglib.to_plain(cfg.prepare_data), data_dir,
                                      self.cache_dir, get_path_only=False)
        self.screen("train", manifests["train"])
        outputs, dropped = {"train": manifests["train"]}, {}
        for split, trials in manifests.items():
            if split == "train":
                continue
            utts = write_trial_utterances(trials, data_dir / f"{split}_utts.csv")
            self.screen(f"{split} utterances", utts)
            dropped[split] = drop_unusable_trials(trials, utts, split,
                                                  data_dir / "excluded.csv")
            outputs.update({split: trials, f"{split}_utts": utts})
        dropped_json = data_dir / DROPPED_TRIALS_JSON
        dropped_json.write_text(json.dumps(dropped, indent=1))
        return StageResult(outputs={**manifest_outputs(outputs),
                                    "dropped_trials_json": str(dropped_json)},
                           inputs=corpus_inputs(cfglib.to_plain(cfg.prepare_data)))

    def trial_splits(self) -> list[str]:
        return [s for s in self.manifests() if s != "train" and not s.endswith("_utts")]

    def check_builders(self, cfg) -> None:
        """Also the loss: a wrong name or argument fails before stage 0, not at training."""
        super().check_builders(cfg)
        conf = cfg.build_task
        check_kwargs(LOSSES.get(conf.loss_type, "build_task.loss_type"), conf.loss_conf,
                     "build_task.loss_conf", dict.fromkeys(("input_size", "num_classes")))

    # -- model -------------------------------------------------------------------------------
    def model_output_size(self, encoder, cfg) -> int:
        return cfg.build_downstream.embedding_size

    def build_task(self, build_task, model, encoder):
        return SpeakerVerificationTask(model, len(encoder), model.downstream.output_size,
                                       **build_task)

    # -- data --------------------------------------------------------------------------------
    def build_dataset(self, build_dataset, target_dir, cache_dir, mode, data_csv, encoder_path):
        """Training: random crops of at most ``max_secs`` with speaker labels, utterances
        under ``min_secs`` dropped. Otherwise: whole utterances as ``chunk_secs`` windows."""
        manifest = read_manifest(data_csv)
        cache = cache_dir if build_dataset["cache_waveforms"] else None
        rate = build_dataset["sample_rate"]
        if mode != "train":
            utterances = AudioDataset(manifest, sample_rate=rate, cache_dir=cache)
            return WindowDataset(utterances, build_dataset["test"]["chunk_secs"])
        conf = build_dataset["train"]
        if conf.get("min_secs"):
            short = manifest["duration"] < conf["min_secs"]
            log.info("train: %d utterances shorter than min_secs=%s s dropped, %d kept",
                     int(short.sum()), conf["min_secs"], int((~short).sum()))
            manifest = manifest[~short]
        encoder = self.load_encoder(encoder_path)
        return AudioDataset(manifest, encoder.index, rate, conf.get("max_secs"), "random",
                            seed=self.cfg.train.seed, label_column="spk", cache_dir=cache)

    def build_collate_fn(self, build_collate_fn, mode):
        return super().build_collate_fn(build_collate_fn, mode) if mode == "train" \
            else collate_windows

    # -- embeddings and scores ---------------------------------------------------------------
    def embed(self, cfg, task, utts_csv) -> np.ndarray | None:
        """Embeddings (N, E) of a manifest's utterances in row order (rank 0; None on others)."""
        loader = self.build_loader(cfg, "test", utts_csv)
        metrics, embeddings = self.evaluate_loader(task, loader)
        if embeddings is None:
            return None
        # an utterance with an unreadable file has no (or not every) window: a NaN row
        ids = loader.dataset.utterances.ids
        embeddings = nan_rows_to(embeddings, len(ids))  # the task counts up to the last one
        skipped = {item["id"] for item in metrics.get("skipped_items", [])}
        embeddings[[row for row, utt in enumerate(ids) if utt in skipped]] = np.nan
        return embeddings

    def build_validation(self, cfg, task):
        """Validation EER/minDCF on the held-out speakers' trials (every ``eval_step``)."""
        csvs = self.manifests()
        loader = self.build_loader(cfg, "test", csvs["valid_utts"])

        def validate() -> dict:
            _, embeddings = self.evaluate_loader(task, loader)
            metrics = None
            if self.dist.is_main:
                scores, unscored = scored_trials(
                    score_trials(csvs["valid"], csvs["valid_utts"], embeddings), "valid")
                metrics = verification_metrics(scores["score"], scores["label"])
                metrics["skipped_trials"] = unscored
            return self.dist.broadcast(metrics)
        return validate

    def stored_embeddings(self, cfg, task, ckpt: Path, name: str, utts_csv: Path) -> np.ndarray:
        """``embed`` once per (checkpoint, manifest, settings); later calls read the disk."""
        key = {"checkpoint": file_digest(ckpt), "manifest": file_digest(utts_csv),
               "settings": {s: cfglib.to_plain(cfg[s]) for s in ("build_dataset",
                                                                 "build_upstream",
                                                                 "build_featurizer",
                                                                 "build_downstream")}}
        store = EmbeddingStore(self.target_dir / "evaluate" / "embeddings" / ckpt.stem / name)
        stored = store.load(key) if self.dist.is_main else None
        if self.dist.broadcast(stored is not None):  # only rank 0 uses them: send a flag
            log.info("%s: reusing the stored embeddings of %s", name, ckpt.name)
            return stored
        embeddings = self.embed(cfg, task, utts_csv)
        if self.dist.is_main and not np.isnan(embeddings).any():  # unreadable audio: retry later
            store.save(key, embeddings)
        return embeddings

    # -- stage 3 -----------------------------------------------------------------------------
    def stage_evaluate(self, cfg) -> StageResult:
        self.trained_config()  # warns about sections today's command changes
        models, splits, results = TrainedModels(self), self.evaluated_splits(cfg), []
        for name, path in self.chosen_checkpoints(cfg).items():
            task, state, trained = models.load(path)
            cohort = self.cohort(cfg, trained, task, path)
            for split in splits:
                record = self.evaluate_trials(trained, task, path, name, split, cohort)
                results.append({**record, "step": state["progress"]["step"]})
        out = self.target_dir / "evaluate" / "results.json"
        if self.dist.is_main:
            out.write_text(json.dumps(results, indent=1))
        return StageResult(outputs={"results": str(out)})

    def evaluated_splits(self, cfg) -> list[str]:
        available = self.trial_splits()
        wanted = ["valid"] + [s for s in cfg.evaluate.splits if s != "valid"]
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise ConfigError(f"evaluate.splits: no trial list {unknown}; have "
                              f"{', '.join(available)} (add lists with prepare_data.trial_lists)")
        return wanted

    def evaluate_trials(self, cfg, task, ckpt, name, split, cohort) -> dict:
        csvs = self.manifests()
        embeddings = self.stored_embeddings(cfg, task, ckpt, split, csvs[f"{split}_utts"])
        if not self.dist.is_main:
            return {}
        scores, unscored = scored_trials(score_trials(
            csvs[split], csvs[f"{split}_utts"], embeddings, cohort,
            self.cfg.evaluate.as_norm.top_k), split)
        metrics = verification_metrics(scores["score"], scores["label"])
        metrics["skipped_trials"] = unscored
        # the `score` command compares plain cosines: keep their threshold even under AS-norm
        _, metrics["cosine_eer_threshold"] = eer(scores.get("cosine", scores["score"]),
                                                 scores["label"])
        folder = self.target_dir / "evaluate" / name / split
        folder.mkdir(parents=True, exist_ok=True)
        scores.to_csv(folder / "scores.csv", index=False)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1))
        log.info("%s on %s: EER %.2f%%  minDCF0.01 %.4f  minDCF0.05 %.4f  (%d trials)", name,
                 split, 100 * metrics["eer"], metrics["min_dcf_0.01"], metrics["min_dcf_0.05"],
                 metrics["n_trials"])
        return {"checkpoint": name, "checkpoint_path": self.book.relative(ckpt),
                "split": split, "metrics": metrics,
                "scores_csv": self.book.relative(folder / "scores.csv"),
                "metrics_json": self.book.relative(folder / "metrics.json")}

    def cohort(self, cfg, trained, task, ckpt) -> np.ndarray | None:
        """AS-norm cohort: one mean embedding per training speaker (None when disabled)."""
        conf = cfg.evaluate.as_norm
        if not conf.enabled:
            return None
        utts_csv = self.target_dir / "evaluate" / "cohort_utts.csv"
        if self.dist.is_main:
            write_cohort(self.manifests()["train"], utts_csv, conf.utterances_per_speaker)
        self.dist.barrier()
        embeddings = self.stored_embeddings(trained, task, ckpt, "cohort", utts_csv)
        if not self.dist.is_main:
            return None
        speakers = read_manifest(utts_csv)["spk"].to_numpy()
        embedded = ~np.isnan(embeddings).any(axis=1)  # unreadable audio: no embedding
        speakers, embeddings = speakers[embedded], embeddings[embedded]
        return np.stack([embeddings[speakers == s].mean(0) for s in np.unique(speakers)])

    # -- the `score` command -----------------------------------------------------------------
    def score_files(self, wav1, wav2, checkpoint: str = "valid_best") -> dict:
        """Cosine score of two audio files under an evaluated checkpoint, and the decision at
        that checkpoint's validation-EER threshold. Needs :meth:`attach` and stage 3."""
        record = self.validation_record(checkpoint)
        if getattr(self, "trained_models", None) is None:  # kept: a server scores many pairs
            self.trained_models = TrainedModels(self)
        task, _, trained = self.trained_models.load(record["checkpoint_path"])
        trained.build_dataset.cache_waveforms = False  # two files: not worth a cache entry
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(tmp) / "pair.csv"
            pd.DataFrame({"id": ["a", "b"], "wav_path": [str(wav1), str(wav2)]}).to_csv(
                manifest, index=False)
            check_readable(manifest, Path(tmp) / "excluded.csv")
            embeddings = self.embed(trained, task, manifest)
        score = float(cosine_scores(embeddings, [0], [1])[0])
        threshold = record["metrics"]["cosine_eer_threshold"]
        return {"score": score, "threshold": threshold, "same_speaker": score >= threshold,
                "checkpoint": checkpoint, "step": record["step"]}

    def validation_record(self, checkpoint: str) -> dict:
        results = self.evaluation_results()
        for record in results:
            if record["checkpoint"] == checkpoint and record["split"] == "valid":
                return record
        names = sorted({r["checkpoint"] for r in results})
        raise UserError(f"checkpoint '{checkpoint}' has no validation result in "
                        f"{self.target_dir}/evaluate; evaluated: {', '.join(names)} "
                        f"(evaluate others with test_ckpt_steps=[...] start=evaluate)")

    # -- stage 4 -----------------------------------------------------------------------------
    def report(self, report, results, report_dir):
        """The verification report, with the training setup and curves, utterances, speakers
        and trials per split, and the trials stage 0 dropped."""
        best_name = best_by_valid_eer(results)
        best = next(r for r in results if r["checkpoint"] == best_name and r["split"] == "valid")
        training = training_summary(self, lambda cfg: {"name": cfg["build_task"]["loss_type"],
                                                       "conf": cfg["build_task"]["loss_conf"]})
        return write_verification_report(report_dir, results, best, type(self).__name__,
                                         training=training, data=self.data_summary())

    def data_summary(self) -> dict:
        """``{"splits": split_counts(...), "dropped_trials": stage 0's record or None}``
        (None: the data was prepared before the record was kept)."""
        outputs = self.book.require("prepare_data")["outputs"]
        path = outputs.get("dropped_trials_json")
        dropped = json.loads(self.book.resolve(path).read_text()) if path else None
        return {"splits": split_counts(self.manifests()), "dropped_trials": dropped}


def check_readable(manifest: Path, excluded_csv: Path) -> None:
    """Screen a manifest (adding ``duration``); an unusable file is an :class:`AudioError`."""
    if screen_manifest(manifest, excluded_csv, num_workers=1).excluded:
        bad = pd.read_csv(excluded_csv).iloc[0]
        raise AudioError(bad["wav_path"], bad["reason"])


def nan_rows_to(embeddings: np.ndarray, count: int) -> np.ndarray:
    """``embeddings`` (M, E) with NaN rows appended up to ``count`` rows."""
    pad = np.full((count - len(embeddings), embeddings.shape[1]), np.nan, embeddings.dtype)
    return np.concatenate([embeddings, pad])


def scored_trials(scores: pd.DataFrame, split: str) -> tuple[pd.DataFrame, int]:
    """The trials both of whose utterances were embedded, and how many others there were
    (an utterance whose audio became unreadable after stage 0 has a NaN embedding)."""
    unscored = scores["score"].isna()
    if unscored.any():
        log.warning("%s: %d of %d trials not scored: they name audio that could not be read "
                    "(warned above)", split, int(unscored.sum()), len(scores))
    return scores[~unscored].reset_index(drop=True), int(unscored.sum())


def write_trial_utterances(trials_csv, out_csv) -> Path:
    """Each utterance of a trial list once: ``id, wav_path`` (sorted by id)."""
    trials = read_manifest(trials_csv)
    utts = pd.concat([trials[["id1", "wav_path1"]].set_axis(["id", "wav_path"], axis=1),
                      trials[["id2", "wav_path2"]].set_axis(["id", "wav_path"], axis=1)])
    utts.drop_duplicates("id").sort_values("id").to_csv(out_csv, index=False)
    return Path(out_csv)


def drop_unusable_trials(trials_csv, utts_csv, split: str, excluded_csv=None) -> dict:
    """Remove (in place) trials naming an utterance that stage-0 screening excluded.

    Returns ``{"listed": trials in the list, "dropped", "kept", "excluded_utterances":
    [{"id", "reason"}]}``: the utterances that caused the drops, with the reason screening
    gave in ``excluded_csv`` (``data/excluded.csv``; ``None``: reasons left empty).
    """
    trials, kept = read_manifest(trials_csv), set(read_manifest(utts_csv)["id"])
    usable = trials["id1"].isin(kept) & trials["id2"].isin(kept)
    if not usable.all():
        log.warning("%s: %d of %d trials dropped: they name unusable audio (data/excluded.csv)",
                    split, int((~usable).sum()), len(trials))
        trials[usable].to_csv(trials_csv, index=False)
    named = set(trials["id1"]) | set(trials["id2"])
    return {"listed": len(trials), "dropped": int((~usable).sum()), "kept": int(usable.sum()),
            "excluded_utterances": exclusion_reasons(sorted(named - kept), excluded_csv)}


def exclusion_reasons(ids: list[str], excluded_csv) -> list[dict]:
    """``[{"id", "reason"}]`` for ``ids`` from an ``id, wav_path, reason`` CSV (first match;
    ``""`` when the CSV is absent or does not name an id)."""
    path = Path(excluded_csv) if excluded_csv else None
    table = read_manifest(path) if path and path.is_file() and ids else None
    reasons = {} if table is None else dict(zip(table["id"][::-1], table["reason"][::-1]))
    return [{"id": i, "reason": str(reasons.get(i, ""))} for i in ids]


def write_cohort(train_csv, out_csv, per_speaker: int) -> Path:
    """Up to ``per_speaker`` utterances of every training speaker (first by id)."""
    train = read_manifest(train_csv).sort_values("id")
    cohort = train.groupby("spk", sort=True).head(per_speaker)
    cohort[["id", "wav_path", "spk", "duration"]].to_csv(out_csv, index=False)
    return Path(out_csv)


def score_trials(trials_csv, utts_csv, embeddings, cohort=None, top_k: int = 300
                 ) -> pd.DataFrame:
    """``id1, id2, label, score`` for every trial: cosine of the two embeddings (rows of
    ``embeddings`` follow ``utts_csv``); with a ``cohort`` (C, E) ``score`` is AS-normalised
    and the plain cosine is kept as a ``cosine`` column."""
    trials = read_manifest(trials_csv)
    index1, index2 = trial_rows(trials_csv, utts_csv)
    table = pd.DataFrame({"id1": trials["id1"], "id2": trials["id2"],
                          "label": trials["label"].astype(int),
                          "score": cosine_scores(embeddings, index1, index2)})
    if cohort is not None:
        table["cosine"] = table["score"]
        table["score"] = as_norm(table["cosine"].to_numpy(), embeddings, index1, index2,
                                 cohort, top_k)
    return table


def trial_rows(trials_csv, utts_csv) -> tuple[np.ndarray, np.ndarray]:
    """Each trial's two utterances as row numbers of ``utts_csv`` (T,), (T,)."""
    trials = read_manifest(trials_csv)
    row = {utt: i for i, utt in enumerate(read_manifest(utts_csv)["id"])}
    return trials["id1"].map(row).to_numpy(), trials["id2"].map(row).to_numpy()
