"""The training loop: steps, accumulation, clipping, validation, checkpoints, exact resume.

A checkpoint is written only between optimisation steps, and holds everything the next step
depends on: task (model) and optimizer and scheduler state, the step, the epoch and how many
batches of it were consumed, the RNG states, and the best validation record. Resuming restores
all of it, so an interrupted run continues as if it had not stopped.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from tqdm import tqdm

from framework.checkpoint import FORMAT, CheckpointDir, load_checkpoint
from framework.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """The ``train`` section (see the problem's YAML for each key's meaning)."""

    total_steps: int
    log_step: int = 100
    eval_step: int = 1000
    save_step: int = 1000
    gradient_clipping: float = 1.0
    gradient_accumulate: int = 1
    valid_metric: str | None = None
    valid_higher_better: bool | None = True
    auto_resume: bool = True
    resume_ckpt_dir: str | None = None
    seed: int = 0
    keep_num_ckpts: int | None = None
    use_scheduler: bool = False


@dataclass
class Progress:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None
    best_step: int | None = None
    history: list = field(default_factory=list)


class Trainer:
    """Runs ``conf.total_steps`` optimisation steps of ``task.train_step``.

    ``loader`` is a DataLoader whose ``batch_sampler`` has ``set_epoch(epoch, start_batch)``
    and whose dataset may have ``set_epoch(epoch)``. ``validate()`` returns a metrics dict.
    ``meta`` (problem name, config, fingerprint) is stored in every checkpoint.
    """

    def __init__(self, conf: TrainConfig, task, optimizer, scheduler, loader,
                 validate: Callable[[], dict], ckpts: CheckpointDir, device, meta: dict,
                 writer=None):
        self.conf, self.task, self.optimizer, self.scheduler = conf, task, optimizer, scheduler
        self.loader, self.validate, self.ckpts = loader, validate, ckpts
        self.device, self.meta, self.writer = device, meta, writer
        self.progress = Progress()
        self.params = [p for p in task.parameters() if p.requires_grad]

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> Progress:
        self.resume()
        bar = tqdm(total=self.conf.total_steps, initial=self.progress.step, desc="train",
                   dynamic_ncols=True, mininterval=1.0)
        losses, started = [], [time.time()]
        while self.progress.step < self.conf.total_steps:
            for batches in self.step_groups():
                losses.append(self.optimizer_step(batches))
                bar.update(1)
                self.after_step(losses, started)
                if self.progress.step >= self.conf.total_steps:
                    break
            else:
                self.progress.epoch += 1
                self.progress.batch_in_epoch = 0
        bar.close()
        self.save_step()
        return self.progress

    def step_groups(self):
        """Yield lists of ``gradient_accumulate`` batches from the rest of this epoch."""
        sampler = self.loader.batch_sampler
        sampler.set_epoch(self.progress.epoch, self.progress.batch_in_epoch)
        if hasattr(self.loader.dataset, "set_epoch"):
            self.loader.dataset.set_epoch(self.progress.epoch)
        group, yielded = [], False
        for batch in self.loader:
            group.append(batch)
            if len(group) == self.conf.gradient_accumulate:
                self.progress.batch_in_epoch += len(group)
                yielded = True
                yield group
                group = []
        if not yielded and self.progress.batch_in_epoch == 0:
            raise UserError("the training set yields no full step (fewer batches than "
                            "train.gradient_accumulate?); check the train manifest")

    def optimizer_step(self, batches: list[dict]) -> float:
        self.task.train()
        total = 0.0
        for batch in batches:
            loss = self.task.train_step(to_device(batch, self.device))
            (loss / len(batches)).backward()
            total += loss.item() / len(batches)
        if math.isfinite(total):
            torch.nn.utils.clip_grad_norm_(self.params, self.conf.gradient_clipping)
            self.optimizer.step()
            if self.conf.use_scheduler:
                self.scheduler.step()
        else:
            log.warning("step %d: non-finite loss, update skipped", self.progress.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return total

    def after_step(self, losses: list[float], started: list[float]) -> None:
        step, conf = self.progress.step, self.conf
        if step % conf.log_step == 0:
            mean = sum(losses) / len(losses)
            log.info("step %d  loss %.4f  lr %.3g  %.1f steps/s", step, mean,
                     self.optimizer.param_groups[0]["lr"], len(losses) / (time.time() - started[0]))
            self.scalar("train/loss", mean)
            losses.clear()
            started[0] = time.time()
        if step % conf.eval_step == 0 or step == conf.total_steps:
            self.run_validation()
        if step % conf.save_step == 0:
            self.save_step()

    # -- validation and checkpoints -----------------------------------------------------------
    def run_validation(self) -> None:
        metrics = self.validate()
        step = self.progress.step
        for name, value in metrics.items():
            if isinstance(value, (int, float)):
                self.scalar(f"valid/{name}", value)
        value = metrics.get(self.conf.valid_metric)
        summary = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                            if isinstance(v, float))
        log.info("step %d  valid  %s", step, summary)
        self.progress.history.append({"step": step, **{k: v for k, v in metrics.items()
                                                       if isinstance(v, (int, float))}})
        if value is not None and self.is_better(value):
            self.progress.best_value, self.progress.best_step = float(value), step
            self.ckpts.save_best(self.state(full=False))
            log.info("step %d  new valid_best %s=%.4f", step, self.conf.valid_metric, value)

    def is_better(self, value: float) -> bool:
        best = self.progress.best_value
        if best is None:
            return True
        return value > best if self.conf.valid_higher_better else value < best

    def save_step(self) -> None:
        if self.progress.step and self.progress.step not in self.ckpts.steps():
            self.ckpts.save_step(self.progress.step, self.state(full=True))

    def state(self, full: bool) -> dict:
        state = {"format": FORMAT, **self.meta, "task": self.task.trainable_state_dict(),
                 "progress": asdict(self.progress)}
        if full:
            state.update(optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), rng=rng_state())
        return state

    def resume(self) -> None:
        path = self.conf.resume_ckpt_dir or (self.ckpts.latest() if self.conf.auto_resume
                                             else None)
        if path is None:
            seed_everything(self.conf.seed)
            return
        state = load_checkpoint(path, self.meta["problem"])
        self.task.load_trainable_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(**state["progress"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", path, self.progress.step)

    def scalar(self, name: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, self.progress.step)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
