"""Named registries of building blocks (upstreams, downstreams, problems, ...).

A registry maps a short name used in YAML (``build_upstream.name: fbank``) to a class. Lookups
of unknown names fail with the list of choices and the closest match, and configs are checked
against the constructor's signature before anything is built.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Callable, Generic, TypeVar

from framework.errors import ConfigError

T = TypeVar("T")


def closest(name: str, choices) -> str:
    """``"; did you mean 'x'?"`` for the nearest choice, or ``""`` when none is near."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


class Registry(Generic[T]):
    """A name → class table for one kind of building block.

    >>> upstreams = Registry("upstream")
    >>> @upstreams.register("identity")
    ... class Identity:
    ...     '''Returns its input.'''
    >>> upstreams.get("identity").__name__
    'Identity'
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def add(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = cls
            return cls
        return add

    def get(self, name: str, key: str | None = None) -> type[T]:
        """The class registered as ``name``; ``key`` names the config key for errors."""
        if name not in self._entries:
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}unknown {self.kind} '{name}'{closest(name, self._entries)} "
                              f"Choose one of: {', '.join(sorted(self._entries))}.")
        return self._entries[name]

    def build(self, name: str, conf: dict | None = None, key: str | None = None, **given):
        """Instantiate ``name`` with ``conf`` (from YAML) plus ``given`` (from the stage)."""
        cls = self.get(name, key)
        check_kwargs(cls, conf or {}, key or self.kind, given=given)
        return cls(**given, **(conf or {}))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def summaries(self) -> dict[str, str]:
        """name → first line of the class docstring."""
        return {name: first_line(cls) for name, cls in sorted(self._entries.items())}


def first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


def check_kwargs(fn, conf: dict, key: str, given: dict | None = None) -> None:
    """Fail with a :class:`ConfigError` if ``fn`` does not accept the keys of ``conf``."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n not in (given or {}) and n != "self"]
    for name in conf:
        if name not in accepted:
            raise ConfigError(f"{key}.{name}: not an argument of {fn.__name__}"
                              f"{closest(name, accepted)} Accepted: {', '.join(accepted)}. "
                              f"To drop arguments set for another choice, replace the whole "
                              f"mapping: {key}={{...}}")
