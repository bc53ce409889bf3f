"""Process groups on ``torch.distributed``: who we are, waiting for rank 0, gathering results.

A run is distributed when torchrun's environment says so (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) or when the run is given
``world_size > 1`` and its ``rank`` (then ``MASTER_ADDR``/``MASTER_PORT`` default to
127.0.0.1:29500 and all processes are taken to be on this machine). Backend: gloo on CPU,
nccl on CUDA. Every collective has the run's ``dist_timeout``, so a dead peer ends the run
with an error instead of a hang.
"""
from __future__ import annotations

import datetime
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from framework.errors import ConfigError, UserError

log = logging.getLogger(__name__)

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run. ``world_size == 1`` means no process group."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (any picklable object; in-process transport)."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """``[value of rank 0, value of rank 1, ...]`` on every rank."""
        if not self.enabled:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def on_main(self, fn, what: str):
        """Run ``fn()`` on rank 0 while the others wait; every rank gets its result, and
        every rank raises if rank 0 failed (so no peer is left waiting)."""
        if not self.enabled:
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except BaseException as err:
                self.broadcast(("error", f"{type(err).__name__}: {err}"))
                raise
        status, value = self.broadcast(outcome)
        if status == "error":
            raise UserError(f"rank 0 failed in {what}: {value}")
        return value

    @contextmanager
    def main_first(self):
        """Rank 0 runs the block first (building a shared cache, say), then the others."""
        if self.enabled and not self.is_main:
            dist.barrier()
        yield
        if self.enabled and self.is_main:
            dist.barrier()


def resolve(world_size: int, rank: int, env=None) -> Distributed:
    """The run's shape from torchrun's environment, else from the ``world_size``/``rank``
    keys; a config that contradicts the environment is an error."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env and "RANK" in env:
        shape = Distributed(int(env["WORLD_SIZE"]), int(env["RANK"]),
                            int(env.get("LOCAL_RANK", 0)),
                            int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
        if world_size not in (1, shape.world_size) or (world_size > 1 and rank != shape.rank):
            raise ConfigError(f"world_size={world_size} rank={rank} contradict the launcher's "
                              f"WORLD_SIZE={shape.world_size} RANK={shape.rank}; under torchrun "
                              "leave world_size and rank unset")
        return shape
    if not 0 <= rank < max(world_size, 1):
        raise ConfigError(f"rank={rank} must be in [0, world_size={world_size})")
    return Distributed(world_size, rank, rank, world_size)


def start(shape: Distributed, device: torch.device, backend: str, timeout_s: float) -> None:
    """Join the process group (no-op for one process) and share the CPU among local ranks."""
    if not shape.enabled:
        return
    # the cores this process may use (a SLURM or taskset allocation), not the whole node's
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // shape.local_world_size)
    torch.set_num_threads(threads)  # 2 processes x all cores each would thrash a small machine
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    try:
        dist.init_process_group(backend, rank=shape.rank, world_size=shape.world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as err:  # rendezvous failures surface as several error types
        raise UserError(f"rank {shape.rank}: could not join the process group at "
                        f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within "
                        f"dist_timeout={timeout_s:g} s: {err}") from err


def describe(shape: Distributed) -> str:
    return (f"{shape.world_size} processes, backend {dist.get_backend()}, "
            f"{torch.get_num_threads()} CPU threads each, master "
            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}")


def stop(shape: Distributed, clean: bool = True) -> None:
    """Leave the process group. After a clean run all ranks first meet, so none tears down
    its connections while a peer still uses them (seen as an abort at exit under torchrun)."""
    if not (shape.enabled and dist.is_initialized()):
        return
    if clean:
        dist.barrier()
    dist.destroy_process_group()


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from a collective whose peer vanished or timed out."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return any(mark in text for mark in ("gloo", "nccl", "connection closed", "timed out",
                                         "connection reset"))


def peer_failure(shape: Distributed, err: Exception) -> UserError:
    """A clear message for a collective that failed because a peer died or timed out."""
    return UserError(f"rank {shape.rank}: a collective operation failed ({type(err).__name__}: "
                     f"{str(err).splitlines()[0] if str(err) else ''}). Another process probably "
                     "died (see its log) or exceeded dist_timeout.")


def local_device(name: str, shape: Distributed) -> str:
    """``cuda`` becomes ``cuda:<local_rank>`` so each local process gets its own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return f"cuda:{shape.local_rank}" if name == "cuda" and shape.enabled else name
