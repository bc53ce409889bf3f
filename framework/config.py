"""The config contract: YAML defaults < ``--config`` files < dotlist overrides.

Every top-level section is named after the ``build_*`` (or stage) method that receives it.
Merging is strict: a key absent from the defaults is an error that names the nearest valid
key, a value of the wrong type is an error, and a ``???`` left unset is an error before any
stage runs. Only mappings named ``conf`` (or ``loss_conf``) are open: they are keyword
arguments handed to a class chosen by a name (an optimizer, an upstream, a loss, ...), and are
checked against that class's signature before any stage runs. ``section.conf.key=value``
merges one argument; ``section.conf={...}`` on the command line replaces the whole mapping
(how to drop the arguments of the previously chosen class).

Value ranges are declared once, in the default YAML next to each key, as a comment ending in
``(must be RULE)``: alternatives joined by ``or``, conditions by ``and``, each one of
``>= N``, ``> N``, ``<= N``, ``< N``, a literal number, ``null`` or ``non-empty``::

    batch_size: 32   # utterances per batch (must be >= 1)
    max_secs: 1.0    # crop longer utterances to this (must be > 0 or null)

Every number anywhere must be finite (no ``nan``/``inf``).
"""
from __future__ import annotations

import importlib.resources
import math
import operator
import re
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from framework.errors import ConfigError
from framework.registry import closest

# The ``configs`` package holds the defaults, so a wheel install finds them too.
CONFIG_DIR = Path(str(importlib.resources.files("configs")))
OPEN_KEYS = {"conf", "loss_conf"}
STAGE_KEYS = {"start", "stop"}  # a number or a name; checked by framework.stages.stage_index


def resolve_config_file(name: str | Path, near: Path | None = None) -> Path:
    """Find a default-config file: absolute, next to ``near`` (a module file), or in configs/."""
    name = Path(name)
    candidates = [name] if name.is_absolute() else [CONFIG_DIR / name]
    if near is not None and not name.is_absolute():
        candidates.insert(0, near.parent / name)
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"default config '{name}' not found (looked in "
                      f"{', '.join(str(c.parent) for c in candidates)})")


def load_yaml(path: str | Path) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # omegaconf/yaml raise many types; the message is what matters
        raise ConfigError(f"--config {path}: not valid YAML: {err}") from err
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"--config {path}: expected a mapping of sections at the top level")
    return cfg


def parse_dotlist(items: Iterable[str]) -> DictConfig:
    """``["train.total_steps=10", ...]`` → config; each item must contain ``=``."""
    items = list(items)
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
    return OmegaConf.from_dotlist(items)


def replace_open_mappings(cfg: DictConfig, items: Iterable[str]) -> None:
    """Apply ``section.conf={...}`` dotlist items as replacements, not merges (in place)."""
    for item in items:
        key, _, value = item.partition("=")
        if key.rsplit(".", 1)[-1] in OPEN_KEYS and value.lstrip().startswith("{"):
            mapping = OmegaConf.select(OmegaConf.from_dotlist([item]), key)
            OmegaConf.update(cfg, key, OmegaConf.to_container(mapping), merge=False)


def merge_layer(base: DictConfig, layer: Any, origin: str) -> DictConfig:
    """Merge ``layer`` over ``base`` after checking every key and type against ``base``."""
    layer = layer if isinstance(layer, DictConfig) else OmegaConf.create(layer or {})
    check_layer(base, layer, prefix="", origin=origin)
    merged = OmegaConf.merge(base, layer)
    if origin.startswith("--config"):
        replace_switched_mappings(merged, base, layer)
    return merged


def replace_switched_mappings(merged: DictConfig, base: DictConfig, layer: DictConfig) -> None:
    """A YAML file's section that switches ``name`` to another class and gives its open
    mappings (``conf``) states that class's arguments whole: they replace the old class's
    (which the new one would not take), as ``section.conf={...}`` does on the command line."""
    for section in layer.keys():
        given, before = layer[section], base[section]
        if not (isinstance(given, DictConfig) and "name" in given and "name" in before) \
                or given.name == before.name:
            continue
        for key in OPEN_KEYS & set(map(str, given.keys())):
            OmegaConf.update(merged, f"{section}.{key}", OmegaConf.to_container(given[key]),
                             merge=False)


def check_layer(base: DictConfig, layer: DictConfig, prefix: str, origin: str) -> None:
    for key in layer.keys():
        path = f"{prefix}{key}"
        if key not in base.keys():
            raise ConfigError(f"{origin}: unknown key '{path}'{closest(str(key), base.keys())} "
                              f"Valid keys{' under ' + prefix[:-1] if prefix else ''}: "
                              f"{', '.join(map(str, base.keys()))}.")
        default = OmegaConf.to_container(base, resolve=False)[key]
        value = OmegaConf.to_container(layer, resolve=False)[key]
        if str(key) in OPEN_KEYS and not isinstance(value, dict):
            raise ConfigError(f"{origin}: {path}: expected a mapping of keyword arguments "
                              f"such as {{lr: 0.001}}, got {value!r}")
        if str(key) in OPEN_KEYS or path in STAGE_KEYS:
            continue
        if isinstance(default, dict) and isinstance(value, dict):
            check_layer(base[key], layer[key], f"{path}.", origin)
        else:
            check_type(path, default, value, origin)


def check_type(path: str, default: Any, value: Any, origin: str) -> None:
    """Allow a value of the default's type (int for float too); ``null`` where not int/bool."""
    if default is None or default == "???" or value == "???":
        return
    if value is None:
        if isinstance(default, (bool, int)) and not isinstance(default, float):
            raise ConfigError(f"{origin}: {path} cannot be null (expected {_kind(default)})")
        return
    ok = {bool: (bool,), int: (int,), float: (int, float), str: (str,),
          list: (list,), dict: (dict,)}[type(default)]
    if isinstance(value, bool) and bool not in ok:
        ok = ()
    if not isinstance(value, ok):
        raise ConfigError(f"{origin}: {path} expects {_kind(default)}, got {value!r}")


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}[type(value)]


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Dotted paths of every value still ``???``."""
    found = []
    for key in cfg.keys():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            found.append(path)
        elif isinstance(cfg[key], DictConfig):
            found.extend(missing_keys(cfg[key], f"{path}."))
    return found


def check_complete(cfg: DictConfig, comments: dict[str, str]) -> None:
    """Fail, naming each ``???`` key and what its default-config comment says to set."""
    missing = missing_keys(cfg)
    if missing:
        lines = [f"  {key}=...   # {comments.get(key, 'required')}" for key in missing]
        raise ConfigError("these keys are required and unset (???); set them on the command "
                          "line or in a --config file:\n" + "\n".join(lines))


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.-]*):(?P<rest>.*)$")


def yaml_comments(text: str) -> dict[str, str]:
    """Dotted key → its comment in a YAML file (inline ``# ...`` or the lines just above)."""
    comments, stack, pending = {}, [], []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# ").strip())
            continue
        match = _KEY_LINE.match(line)
        if not match:
            pending = [] if not stripped else pending
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        inline = match["rest"].split(" #", 1)[1].strip() if " #" in match["rest"] else ""
        text_ = inline or " ".join(pending)
        if text_:
            comments[".".join(k for _, k in stack)] = text_
        pending = []
    return comments


_RULE = re.compile(r"\(must be ([^)]*)\)\s*$")
_COMPARE = re.compile(r"^(>=|<=|>|<)\s*(-?[\d.e+-]+)$")
_OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def value_rules(comments: dict[str, str]) -> dict[str, str]:
    """Dotted key → its ``(must be ...)`` rule, from the default configs' comments."""
    rules = {}
    for key, text in comments.items():
        match = _RULE.search(text)
        if match:
            rules[key] = match[1].strip()
    return rules


def satisfies(value: Any, rule: str) -> bool:
    """Whether ``value`` meets ``rule`` (``">= 1 or null"``, ``"> 0 and < 1"``, ...)."""
    return any(all(_meets(value, cond.strip()) for cond in alternative.split(" and "))
               for alternative in rule.split(" or "))


def _meets(value: Any, condition: str) -> bool:
    if condition == "null":
        return value is None
    if condition == "non-empty":
        return isinstance(value, str) and bool(value.strip())
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    match = _COMPARE.match(condition)
    if match:
        return _OPERATORS[match[1]](value, float(match[2]))
    try:
        return value == float(condition)
    except ValueError:
        raise ValueError(f"unknown config rule '{condition}'") from None


def check_values(cfg: DictConfig, comments: dict[str, str]) -> None:
    """Fail, naming the key, on a value outside its declared range, a non-finite number, or
    an open mapping (``conf``) that is not a mapping."""
    plain = to_plain(cfg)
    for path, value in _leaves(plain):
        if path.rsplit(".", 1)[-1] in OPEN_KEYS and not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of keyword arguments such as "
                              f"{{lr: 0.001}}, got {value!r}")
        if not_finite(value):
            raise ConfigError(f"{path}={value}: must be a finite number")
    for key, rule in value_rules(comments).items():
        found, value = _select(plain, key)
        if found and not satisfies(value, rule):
            shown = "null" if value is None else repr(value)
            raise ConfigError(f"{key}={shown}: must be {rule}")


def not_finite(value: Any) -> bool:
    """``nan``/``inf`` as a number, or as the text a command line gives (``lr=nan``)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _leaves(node: Any, prefix: str = ""):
    """(dotted path, value) of every key; mappings are yielded too, then descended."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        path = f"{prefix}{key}"
        yield path, value
        if isinstance(value, (dict, list)):
            yield from _leaves(value, f"{path}.")


def _select(plain: dict, key: str) -> tuple[bool, Any]:
    node = plain
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def to_plain(cfg: DictConfig | dict) -> dict:
    """A resolved, plain-Python copy (what ``build_*`` methods receive)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def save_yaml(cfg: DictConfig | dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(to_plain(cfg))))
