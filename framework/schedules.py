"""Learning-rate schedules, chosen by ``build_scheduler.name``.

The name is a schedule registered here (:data:`SCHEDULES`: ``warmup``) or a class name in
:mod:`torch.optim.lr_scheduler` (``ExponentialLR``, ``StepLR``, ...); ``build_scheduler.conf``
holds its keyword arguments. A schedule registered here is built with the run's
``train.total_steps`` and is stepped after every optimisation step whatever
``train.use_scheduler`` says (its ``steps_every_update`` is true); a torch class is stepped
only with ``train.use_scheduler: true``.

``warmup`` multiplies each parameter group's own learning rate (``build_optimizer.conf.lr``,
or ``build_optimizer.upstream_lr`` for the upstream's group) by ``f(s)`` after ``s``
optimisation steps, with ``T`` = ``total_steps`` and ``W`` = ``warmup_steps``, or
``⌈warmup_ratio · T⌉``::

    f(s) = s / W                                       for s < W (linear warmup), else
    f(s) = max(0, (T - s) / max(1, T - W))             decay: linear
    f(s) = max(0, ½ (1 + cos(π (s - W) / max(1, T - W))))  decay: cosine
    f(s) = 1                                           decay: constant

These are transformers' ``get_{linear,cosine,constant}_schedule_with_warmup`` (what the
Hugging Face audio course and s3prl use; tested equal), so ``f(0) = 0``: with ``W > 0`` the
first update has learning rate 0, the peak is reached after ``W`` steps, and linear and
cosine end at 0 after ``T``.

>>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
>>> sched = build("warmup", {"warmup_ratio": 0.1, "decay": "linear"}, opt, total_steps=100)
>>> lrs = [opt.param_groups[0]["lr"]]
>>> for _ in range(100):
...     opt.step()
...     sched.step()
...     lrs.append(opt.param_groups[0]["lr"])
>>> [round(lrs[s], 4) for s in (0, 5, 10, 55, 100)]
[0.0, 0.05, 0.1, 0.05, 0.0]
"""
from __future__ import annotations

import inspect
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from framework.errors import ConfigError
from framework.registry import Registry, check_kwargs

KEY = "build_scheduler"
SCHEDULES: Registry = Registry("learning-rate schedule")
DECAYS = ("linear", "cosine", "constant")


def warmup_factor(step: int, total_steps: int, warmup_steps: int, decay: str) -> float:
    """``f(step)`` of the module docstring: the multiplier of each group's learning rate."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if decay == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if decay == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def resolve_warmup(total_steps: int, warmup_steps: int | None, warmup_ratio: float | None,
                   key: str = f"{KEY}.conf") -> int:
    """The warmup length in steps: ``warmup_steps``, or ``⌈warmup_ratio · total_steps⌉``
    (transformers' rounding), or 0 when neither is set; a ConfigError naming the key for
    both set or a value out of range."""
    if warmup_steps is not None and warmup_ratio is not None:
        raise ConfigError(f"{key}: set warmup_steps or warmup_ratio, not both "
                          f"(got {warmup_steps} and {warmup_ratio})")
    if warmup_ratio is not None:
        if isinstance(warmup_ratio, bool) or not isinstance(warmup_ratio, (int, float)) \
                or not 0 <= warmup_ratio <= 1:
            raise ConfigError(f"{key}.warmup_ratio={warmup_ratio}: must be >= 0 and <= 1 (a "
                              f"share of train.total_steps)")
        return math.ceil(warmup_ratio * total_steps)
    if warmup_steps is None:
        return 0
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) \
            or not 0 <= warmup_steps <= total_steps:
        raise ConfigError(f"{key}.warmup_steps={warmup_steps}: must be an integer >= 0 and "
                          f"<= train.total_steps ({total_steps}); or set warmup_ratio")
    return warmup_steps


@SCHEDULES.register("warmup")
class WarmupSchedule(LambdaLR):
    """Linear warmup, then linear, cosine or constant decay (transformers' schedules)."""

    steps_every_update = True  # the Trainer steps it after every update (train.use_scheduler)

    def __init__(self, optimizer, total_steps: int, warmup_steps: int | None = None,
                 warmup_ratio: float | None = None, decay: str = "linear"):
        self.total_steps = total_steps
        self.warmup_steps = resolve_warmup(total_steps, warmup_steps, warmup_ratio)
        self.decay = check_decay(decay)
        # a lambda, not a bound method: LambdaLR leaves functions out of its state_dict
        super().__init__(optimizer, lambda step: warmup_factor(
            step, self.total_steps, self.warmup_steps, self.decay))

    @staticmethod
    def check(total_steps: int, warmup_steps=None, warmup_ratio=None, decay="linear") -> None:
        """The constructor's checks, without an optimizer (run before stage 0)."""
        resolve_warmup(total_steps, warmup_steps, warmup_ratio)
        check_decay(decay)


def check_decay(decay: str) -> str:
    if decay not in DECAYS:
        raise ConfigError(f"{KEY}.conf.decay={decay}: must be one of {', '.join(DECAYS)}")
    return decay


def torch_scheduler(name: str):
    """The class ``name`` of torch.optim.lr_scheduler, or None."""
    cls = getattr(torch.optim.lr_scheduler, name, None)
    return cls if inspect.isclass(cls) else None


def check(name: str, conf: dict, total_steps: int) -> None:
    """Fail (ConfigError naming the key) on an unknown name, an argument the schedule does
    not take, or a value out of range: what :func:`build` would refuse, before stage 0."""
    if name in SCHEDULES.names():
        cls = SCHEDULES.get(name)
        check_kwargs(cls, conf, f"{KEY}.conf", given={"optimizer": None, "total_steps": None})
        cls.check(total_steps, **conf)
    elif torch_scheduler(name) is not None:
        check_kwargs(torch_scheduler(name), conf, f"{KEY}.conf")
    else:
        raise ConfigError(f"{KEY}.name: '{name}' is neither a schedule here "
                          f"({', '.join(SCHEDULES.names())}) nor a class in "
                          f"torch.optim.lr_scheduler")


def build(name: str, conf: dict, optimizer, total_steps: int):
    """The scheduler ``name`` over ``optimizer``: a registered schedule (given
    ``total_steps``) or a torch.optim.lr_scheduler class, with ``conf``."""
    check(name, conf, total_steps)
    if name in SCHEDULES.names():
        return SCHEDULES.get(name)(optimizer, total_steps, **conf)
    return torch_scheduler(name)(optimizer, **conf)
