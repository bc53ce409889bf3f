"""Inference in one place: trained models from checkpoints, and the evaluator.

Every consumer of a trained model goes through here: stage 3, validation during training
(both families), ``score``, ``predict``, ``evaluate`` on new data, ``serve`` and ``export``.

* :func:`checkpoint_meta` is what makes a checkpoint self-sufficient: the problem, the whole
  training config, the label list, the sample rate and the upstream's identity.
* :func:`named_checkpoint` turns a ``--checkpoint`` value (``valid_best``, ``step-N``, a
  file) into the file.
* :class:`TrainedModels` rebuilds a task from such a checkpoint (once per configuration,
  reused across checkpoints of one run) with its weights loaded, in eval mode.
* :class:`Evaluator` owns the batch loop, the cross-rank gather and the one-process order of
  the outputs; the task pools windows and computes metrics in ``summarize``.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from framework.audio.dataset import SkippedItems
from framework.checkpoint import CheckpointDir, load_checkpoint
from framework.distributed import Distributed
from framework.encoder import CategoryEncoder
from framework.errors import UserError
from framework.progress import progress
from framework.stages import digest

log = logging.getLogger(__name__)


def checkpoint_meta(problem: str, cfg: dict, encoder: CategoryEncoder, upstream) -> dict:
    """The fields every checkpoint carries besides weights (``cfg`` plain)."""
    return {"problem": problem, "config": cfg, "labels": list(encoder.classes),
            "sample_rate": cfg["build_dataset"]["sample_rate"],
            "upstream": {"name": cfg["build_upstream"]["name"],
                         "conf": cfg["build_upstream"].get("conf", {}), **upstream.identity()}}


def named_checkpoint(problem, name: str) -> tuple[str, Path]:
    """(name, file) of a ``--checkpoint`` value: ``valid_best`` or ``step-N`` (a kept step
    checkpoint of the problem's train stage), or a checkpoint file (named by its stem). A
    UserError lists the choices."""
    folder, label = CheckpointDir(problem.artifact("train", "checkpoints")), name
    if name == "valid_best":
        path = folder.best_path
    elif name.startswith("step-") and name[5:].isdigit():
        path = folder.step_path(int(name[5:])) if int(name[5:]) in folder.steps() else None
    else:
        path, label = Path(name), Path(name).stem
    if path is None or not path.is_file():
        steps = ", ".join(f"step-{s}" for s in folder.steps())
        raise UserError(f"--checkpoint {name}: no such checkpoint in {folder.folder}; choose "
                        f"valid_best{', ' + steps if steps else ''}, or a checkpoint file")
    return label, path


class TrainedModels:
    """Tasks rebuilt from checkpoints for one problem (its ``build_model_and_task``)."""

    def __init__(self, problem):
        self.problem = problem
        self.built: dict[str, object] = {}
        self.last: tuple[tuple, tuple] | None = None  # (file and mtime, what load returned)

    def load(self, checkpoint: str | Path) -> tuple[object, dict, DictConfig]:
        """(task on the problem's device, in eval mode, with the checkpoint's weights; the
        checkpoint's state; the config it was trained with). Loading the same unchanged file
        again returns the same objects without reading it (a server scoring many requests)."""
        path = Path(checkpoint).resolve()
        stamp = (path, path.stat().st_mtime_ns) if path.is_file() else None
        if stamp is not None and self.last is not None and self.last[0] == stamp:
            return self.last[1]
        loaded = self.read(checkpoint)
        self.last = (stamp, loaded) if stamp is not None else None
        return loaded

    def read(self, checkpoint) -> tuple[object, dict, DictConfig]:
        state = load_checkpoint(checkpoint, self.problem.problem_name())
        config = OmegaConf.create(state["config"])
        key = digest({k: state["config"].get(k) for k in self.problem.model_sections})
        if key not in self.built:
            self.built[key] = self.problem.build_model_and_task(config, encoder_of(state,
                                                                                self.problem))
        task = self.built[key]
        task.load_trainable_state_dict(state["task"])
        return task.eval(), state, config


def encoder_of(state: dict, problem) -> CategoryEncoder:
    """The label list a checkpoint carries (older ones: the target_dir's encoder.json)."""
    if "labels" in state:
        return CategoryEncoder(state["labels"])
    return problem.load_encoder(problem.artifact("build_encoder", "encoder"))


class Evaluator:
    """``task.eval_step`` over a loader, sharded over the processes of a run.

    Rank r holds slice r of every global batch (the samplers deal them so); the per-batch
    outputs are gathered and put back in one-process order, so ``task.summarize`` (and so
    metrics and tables) equal a one-process evaluation's. ``limit`` caps the batches
    (-1: all).
    """

    def __init__(self, dist: Distributed, device, limit: int = -1, desc: str = "evaluate"):
        self.dist, self.device, self.limit, self.desc = dist, device, limit, desc

    def run(self, task, loader) -> tuple[dict, object]:
        """→ (metrics on every rank, per-item table on rank 0 and None elsewhere)."""
        batches = self.batches(task, loader)
        if self.dist.enabled:
            batches = interleave(self.dist.gather(batches))
            if not self.dist.is_main:
                return self.dist.broadcast(None), None
        skipped = SkippedItems(item for batch in batches for item in batch.pop("skipped", []))
        outputs: dict[str, list] = {}
        for batch in batches:
            for key, value in batch.items():
                outputs.setdefault(key, []).append(value)
        metrics, table = task.summarize({k: concat(v) for k, v in outputs.items()})
        metrics.update(skipped=len(skipped), skipped_items=skipped.as_records())
        if skipped:
            log.warning("%s: %d items left out, their audio could not be read (metrics: "
                        "skipped_items)", self.desc, len(skipped))
        return self.dist.broadcast(metrics), table

    def batches(self, task, loader) -> list[dict]:
        """``task.eval_step`` of this process's batches (at most ``limit`` of them)."""
        from framework.trainer import to_device

        task.eval()
        total = len(loader) if self.limit < 0 else min(self.limit, len(loader))
        out = []
        for index, batch in enumerate(progress(loader, total=total, desc=self.desc,
                                               leave=False, disable=not self.dist.is_main)):
            if index == total:
                break
            outputs = task.eval_step(to_device(batch, self.device)) if batch["id"] else {}
            out.append({**outputs, "skipped": batch.get("skipped", [])})
        return out


def interleave(per_rank: list[list]) -> list:
    """Batch i of rank 0, of rank 1, ... then batch i+1: the one-process order, because rank r
    holds slice r of each global batch (ranks run out of batches only at the end)."""
    longest = max(len(batches) for batches in per_rank)
    return [batches[i] for i in range(longest) for batches in per_rank if i < len(batches)]


def concat(parts: list):
    if isinstance(parts[0], list):
        return [x for part in parts for x in part]
    return np.concatenate(parts)
