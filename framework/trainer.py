"""The training loop: steps, accumulation, clipping, validation, checkpoints, exact resume.

A checkpoint is written only between optimisation steps (so the gradient-accumulation phase is
always 0), and holds everything the next step depends on: task (model) and optimizer and
scheduler state, the step, the epoch and how many batches of it were consumed, every process's
RNG states, the skipped-step counters and the best validation record. Resuming restores all of
it, so a run killed at any point continues as if it had not stopped.

Distributed: the task is wrapped in DistributedDataParallel; non-final micro-batches of a
step skip the gradient all-reduce; only rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from framework import interrupts
from framework.audio.dataset import SkippedItems
from framework.checkpoint import FORMAT, CheckpointDir, load_checkpoint
from framework.distributed import Distributed
from framework.errors import ConfigError, UserError
from framework.faults import kill_point
from framework.progress import progress

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
    max_nonfinite_steps: int = 10
    precision: str = "fp32"

    # train.precision → the autocast dtype of the forward pass (None: no autocast); fp16 also
    # scales the loss (torch.amp.GradScaler, its state checkpointed)
    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    @staticmethod
    def check_precision(precision: str, device_type: str) -> None:
        """Refuse an unknown ``train.precision``, and fp16 on CPU (CPU float16 autocast is
        slow and partial, and loss scaling is a GPU remedy: bf16 is the CPU choice)."""
        if precision not in TrainConfig.DTYPES:
            raise ConfigError(f"train.precision={precision}: must be one of "
                              f"{', '.join(TrainConfig.DTYPES)}")
        if precision == "fp16" and device_type != "cuda":
            raise ConfigError(f"train.precision=fp16 needs a CUDA device (device="
                              f"{device_type}): float16 autocast with loss scaling is for "
                              f"GPUs; on CPU use train.precision=bf16 (or fp32)")


@dataclass
class Progress:
    """The training state a checkpoint holds beyond the tensors. ``history``: one record per
    validation (``{"step", <metric>: value}``); ``train_history``: one per ``log_step``
    (``{"step", "loss" (mean since the last record, None if every update was skipped),
    "lr"}``). Fields added later have defaults, so older checkpoints still load."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_value: float | None = None
    best_step: int | None = None
    history: list = field(default_factory=list)
    skipped_steps: int = 0      # updates skipped (non-finite loss or gradient, out of memory)
    nonfinite_in_row: int = 0   # consecutive non-finite steps, checked against the limit
    oom_in_row: int = 0
    train_history: list = field(default_factory=list)

    def histories(self) -> dict:
        """What ``train/history.json`` holds: ``{"valid": history, "train": train_history}``."""
        return {"valid": self.history, "train": self.train_history}


class SkipStep(Exception):
    """This step's update is skipped; the message says why (for the log)."""


class Trainer:
    """Runs ``conf.total_steps`` optimisation steps of ``task.train_step``.

    ``loader`` is a DataLoader whose ``batch_sampler`` has ``set_epoch(epoch, start_batch)``
    and whose dataset may have ``set_epoch(epoch)``. ``validate()`` returns a metrics dict.
    ``meta`` (problem name, config, fingerprint) is stored in every checkpoint.
    """

    def __init__(self, conf: TrainConfig, task, optimizer, scheduler, loader,
                 validate: Callable[[], dict], ckpts: CheckpointDir, device, meta: dict,
                 writer=None, dist: Distributed = Distributed()):
        self.conf, self.task, self.optimizer, self.scheduler = conf, task, optimizer, scheduler
        self.loader, self.validate, self.ckpts = loader, validate, ckpts
        self.device, self.meta, self.writer, self.dist = device, meta, writer, dist
        self.progress = Progress()
        self.params = [p for p in task.parameters() if p.requires_grad]
        self.forward = task
        if dist.enabled:
            ids = [device.index] if device.type == "cuda" else None
            self.forward = DistributedDataParallel(task, device_ids=ids)
        self.saved_step = 0
        self.skipped = SkippedItems()  # items the batches left out: unreadable audio
        self.stop_signal = 0  # a SIGTERM noted during this step (any rank): stop after it

    # -- the loop ---------------------------------------------------------------------------
    def fit(self) -> Progress:
        """Train to ``total_steps``. A SIGTERM (see :mod:`framework.interrupts`) is answered
        at the next step boundary with a checkpoint, then :class:`Interrupted`."""
        self.resume()
        bar = progress(total=self.conf.total_steps, initial=self.progress.step, desc="train",
                       unit="step", disable=not self.dist.is_main)
        losses, started = [], [time.time()]
        with interrupts.deferred(), contextlib.closing(bar):
            while self.progress.step < self.conf.total_steps:
                for batches in self.step_groups():
                    loss = self.optimizer_step(batches)
                    if math.isfinite(loss):
                        losses.append(loss)
                    bar.update(1)
                    self.after_step(losses, started)
                    if self.stop_signal:
                        self.save_step()
                        raise interrupts.Interrupted(self.stop_signal)
                    if self.progress.step >= self.conf.total_steps:
                        break
                else:
                    self.progress.epoch += 1
                    self.progress.batch_in_epoch = 0
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
            self.skipped.note(batch)
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
        """One update from ``batches`` (the micro-batches); returns the mean loss over all
        processes, NaN when the update was skipped."""
        self.task.train()
        self.progress.step += 1
        scaler, unscaled = self.scaler, False  # fp16's loss scaler; a no-op when disabled
        try:
            loss = self.accumulate(batches)
            scaler.unscale_(self.optimizer)  # clip and check the true gradients
            unscaled = True
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.conf.gradient_clipping)
            # fp16: an infinite gradient with a finite loss is a scale too high, not a fault
            overflow = scaler.is_enabled() and math.isfinite(loss)
            if not (math.isfinite(loss) and (overflow or math.isfinite(grad_norm))):
                self.nonfinite(batches, loss, float(grad_norm))
            kill_point("step", self.progress.step)
            scaler.step(self.optimizer)  # skips the update when the gradients overflowed
            if not math.isfinite(grad_norm):
                raise SkipStep(f"fp16 gradients overflowed; loss scale lowered from "
                               f"{scaler.get_scale():g}")
            if self.conf.use_scheduler or getattr(self.scheduler, "steps_every_update", False):
                self.scheduler.step()  # warmup schedules (framework.schedules) always step
            self.progress.nonfinite_in_row = self.progress.oom_in_row = 0
        except SkipStep as skip:
            self.progress.skipped_steps += 1
            log.warning("step %d: update skipped (%d skipped in all): %s", self.progress.step,
                        self.progress.skipped_steps, skip)
            loss = float("nan")
        finally:
            if unscaled:
                scaler.update()  # fp16: lower the scale after an overflow, raise it in time
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def accumulate(self, batches: list[dict]) -> float:
        """Forward (under autocast for ``precision`` bf16/fp16) and backward every
        micro-batch; the all-reduce runs on the last only."""
        self.check_items(batches)
        total, dtype = 0.0, TrainConfig.DTYPES[self.conf.precision]
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            skip_sync = self.dist.enabled and not last
            with self.forward.no_sync() if skip_sync else contextlib.nullcontext():
                try:
                    with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                        loss = self.forward(to_device(batch, self.device))
                    self.scaler.scale(loss / len(batches)).backward()
                except torch.OutOfMemoryError:
                    self.out_of_memory(batch)
            total += loss.item() / len(batches)
        self.stop_signal = interrupts.requested() or 0
        if self.dist.enabled:  # every process must take the same decisions about this step
            shared = torch.tensor([total, self.stop_signal], dtype=torch.float64,
                                  device=self.device)  # nccl: on GPU
            torch.distributed.all_reduce(shared)
            total = shared[0].item() / self.dist.world_size
            self.stop_signal = signal.SIGTERM if shared[1].item() else 0
        return total

    def check_items(self, batches: list[dict]) -> None:
        """Skip the update when a micro-batch lost every item to unreadable audio (on any
        rank: every process must take the same decision)."""
        empty = torch.tensor([float(any(len(b["id"]) == 0 for b in batches))],
                             device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(empty, op=torch.distributed.ReduceOp.MAX)
        if empty.item():
            raise SkipStep("a micro-batch held no readable item (the warnings above name the "
                           "files; train/skipped_items.csv lists them)")

    def nonfinite(self, batches: list[dict], loss: float, grad_norm: float) -> None:
        progress, limit = self.progress, self.conf.max_nonfinite_steps
        progress.nonfinite_in_row += 1
        ids = batch_ids(batches)
        if progress.nonfinite_in_row >= limit:
            raise UserError(
                f"step {progress.step}: {progress.nonfinite_in_row} steps in a row had a "
                f"non-finite loss or gradient (loss {loss}, gradient norm {grad_norm}); last "
                f"batch ids: {ids}. Lower build_optimizer.conf.lr or gradient_clipping, check "
                f"those files, or raise train.max_nonfinite_steps ({limit}). The last "
                f"checkpoint is intact.")
        raise SkipStep(f"non-finite loss {loss} or gradient norm {grad_norm} "
                       f"({progress.nonfinite_in_row} in a row); batch ids: {ids}")

    def out_of_memory(self, batch: dict) -> None:
        """Skip a batch that does not fit once; stop with advice if it keeps happening."""
        self.optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.progress.oom_in_row += 1
        rate = self.meta.get("sample_rate", 16000)
        secs = batch["wav"].shape[-1] / rate if "wav" in batch else float("nan")
        where = f"batch of {len(batch.get('id', []))} items, {secs:.1f} s padded; ids " \
                f"{batch_ids([batch])}"
        advice = ("reduce build_batch_sampler.train.batch_size or build_dataset.train.max_secs "
                  "(raise train.gradient_accumulate to keep the effective batch)")
        if self.dist.enabled or self.progress.oom_in_row > 1:
            raise UserError(f"step {self.progress.step}: out of memory again ({where}); "
                            f"{advice}. The last checkpoint is intact.")
        raise SkipStep(f"out of memory on a {where}; {advice}")

    def after_step(self, losses: list[float], started: list[float]) -> None:
        step, conf = self.progress.step, self.conf
        if step % conf.log_step == 0:
            mean = sum(losses) / len(losses) if losses else float("nan")
            lr = self.optimizer.param_groups[0]["lr"]
            log.info("step %d  loss %.4f  lr %.3g  %.1f steps/s", step, mean, lr,
                     conf.log_step / (time.time() - started[0]))
            self.scalar("train/loss", mean)
            self.scalar("train/lr", lr)
            self.progress.train_history.append(
                {"step": step, "loss": mean if math.isfinite(mean) else None, "lr": lr})
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
        kill_point("validation", step)
        from framework.report.summary import quality_metrics  # the rule the report plots by

        for name, value in quality_metrics(metrics).items():  # no counts, no thresholds
            self.scalar(f"valid/{name}", value)
        featurizer = getattr(getattr(self.task, "model", None), "featurizer", None)
        for layer, weight in (getattr(featurizer, "layer_weights", lambda: None)() or {}).items():
            self.scalar(f"featurizer/layer_{layer:02d}", weight)
        if self.writer is not None:
            self.writer.flush()  # the curves so far are on disk while training goes on
        value = metrics.get(self.conf.valid_metric)
        summary = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                            if isinstance(v, float))
        log.info("step %d  valid  %s", step, summary)
        self.progress.history.append({"step": step, **{k: v for k, v in metrics.items()
                                                       if isinstance(v, (int, float))}})
        if value is not None and self.is_better(value):
            self.progress.best_value, self.progress.best_step = float(value), step
            if self.dist.is_main:
                self.ckpts.save_best(self.state())
            log.info("step %d  new valid_best %s=%.4f", step, self.conf.valid_metric, value)

    def is_better(self, value: float) -> bool:
        best = self.progress.best_value
        if best is None:
            return True
        return value > best if self.conf.valid_higher_better else value < best

    def save_step(self) -> None:
        """A resumable checkpoint of this step (all ranks take part: RNG states are gathered)."""
        if not self.progress.step or self.progress.step == self.saved_step:
            return
        rngs = self.dist.gather(rng_state())
        if self.dist.is_main:
            self.ckpts.save_step(self.progress.step, self.state(rngs))
        self.saved_step = self.progress.step

    def state(self, rngs: list | None = None) -> dict:
        """Model state; with ``rngs`` (one per rank) the full resumable training state."""
        state = {"format": FORMAT, **self.meta, "task": self.task.trainable_state_dict(),
                 "progress": asdict(self.progress)}
        if rngs is not None:
            state.update(optimizer=self.optimizer.state_dict(),
                         scheduler=self.scheduler.state_dict(), rng=rngs,
                         scaler=self.scaler.state_dict())  # {} unless fp16
        return state

    def resume(self) -> None:
        # train.precision=fp16 scales the loss; the scaler is training state, resumed too
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.conf.precision == "fp16")
        path = self.conf.resume_ckpt_dir or (self.ckpts.latest() if self.conf.auto_resume
                                             else None)
        if path is None:
            # per-rank streams: processes must not draw identical dropout masks or crops
            seed_everything(self.conf.seed + self.dist.rank)
            return
        state = load_checkpoint(path, self.meta["problem"])
        if "optimizer" not in state:
            raise UserError(f"{path} holds model weights only (valid_best); resume from a "
                            f"step-*.pt checkpoint")
        self.task.load_trainable_state_dict(state["task"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):  # absent or {} when written without fp16
            self.scaler.load_state_dict(state["scaler"])
        self.progress = Progress(**state["progress"])
        self.saved_step = self.progress.step
        self.restore_rng(state["rng"], path)
        log.info("resumed from %s at step %d", path, self.progress.step)

    def restore_rng(self, rngs: list | dict, path) -> None:
        if isinstance(rngs, dict):  # written before checkpoints held one state per rank
            rngs = [rngs]
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
            return
        log.warning("%s was written by %d processes, this run has %d: random streams restart "
                    "from the seed, so the result will not be bitwise that of an unbroken run",
                    path, len(rngs), self.dist.world_size)
        seed_everything(self.conf.seed + self.dist.rank + self.progress.step)

    def scalar(self, name: str, value: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(name, value, self.progress.step)


def batch_ids(batches: list[dict], shown: int = 8) -> str:
    ids = [i for batch in batches for i in batch.get("id", [])]
    more = f" (+{len(ids) - shown} more)" if len(ids) > shown else ""
    return ", ".join(map(str, ids[:shown])) + more


def to_device(batch, device):
    """Every tensor of ``batch`` (nested in dicts too, e.g. cached hidden states) on
    ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def seed_everything(seed: int) -> None:
    """Seed every global generator: Python's, NumPy's legacy one and torch's (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every global generator's state, as types a weights-only checkpoint can hold."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "numpy" in state:  # absent from checkpoints of earlier versions
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
