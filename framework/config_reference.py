"""The config reference (``docs/config.md``), generated from the default YAML files' comments.

The page has one table of the run keys every problem shares (``configs/problem.yaml``), then,
for every registered problem (the ``framework.problems`` entry points, by name), one table
per config section. A row is one key: its dotted path inside the section, its default (after
the problem's YAML layers are merged), its comment with the ``(must be ...)`` rule taken out,
and its allowed values: that rule, and for a key naming a registered building block the
names registered. Nothing is written by hand, so the page cannot drift from the YAML::

    python -m framework.config_reference           # print the page
    python -m framework.config_reference --write   # rewrite docs/config.md (atomically)
    python -m framework.config_reference --check   # exit 1 when docs/config.md is stale

The output depends only on the YAML files and the registries (no paths, no times), so the
committed page equals a fresh rendering until one of them changes (``tests/test_docs.py``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from framework import config as cfglib
from framework.errors import UserError
from framework.files import atomic_write_text

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "config.md"
COMMAND = "python -m framework.config_reference --write"


def registries() -> dict[str, tuple[str, object]]:
    """Key pattern (``*`` matches one level) → (what it names, the registry it is looked up
    in), for the keys whose value is a registered name."""
    from framework.audio.samplers import BATCH_SAMPLERS
    from framework.models.downstream import DOWNSTREAMS
    from framework.models.losses import LOSSES
    from framework.models.upstream import UPSTREAMS
    from framework.schedules import SCHEDULES

    return {"build_upstream.name": ("upstream", UPSTREAMS),
            "build_downstream.name": ("downstream", DOWNSTREAMS),
            "build_batch_sampler.*.name": ("batch sampler", BATCH_SAMPLERS),
            "build_task.loss_type": ("loss", LOSSES),
            "build_scheduler.name": ("schedule (or a torch.optim.lr_scheduler class)",
                                     SCHEDULES)}


def registered_choices(key: str) -> str:
    """``"upstream: fbank, mel, ..."`` when ``key`` (dotted) names a registered block."""
    parts = key.split(".")
    for pattern, (kind, registry) in registries().items():
        wanted = pattern.split(".")
        if len(wanted) == len(parts) and all(w in ("*", p) for w, p in zip(wanted, parts)):
            return f"a registered {kind}: {', '.join(registry.names())}"
    return ""


def shown(value) -> str:
    """A default as YAML flow text: ``null``, ``true``, ``0.001``, ``[test]``, ``{lr: 0.1}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    return str(value)


def cell(text: str, code: bool = False) -> str:
    """``text`` safe inside a Markdown table cell (pipes escaped), optionally as code."""
    text = text.replace("|", "\\|").replace("\n", " ")
    if code:
        return f"`{text}`" if text else ""
    # outside code spans, <target_dir> would be read as an HTML tag
    parts = text.split("`")
    return "`".join(p if i % 2 else p.replace("&", "&amp;").replace("<", "&lt;")
                    for i, p in enumerate(parts))


def rows(node: dict, comments: dict[str, str], where: str = "",
         section: str = "") -> list[tuple]:
    """(key, default, description, allowed values) of every key under ``node`` (the mapping
    at dotted path ``where``); keys are shown relative to ``section``. A nested mapping that
    is not an open one (``conf``) gets a row of its own (its comment) before its keys."""
    out = []
    for key, value in node.items():
        dotted = f"{where}.{key}" if where else str(key)
        text = comments.get(dotted, "")
        rule = cfglib.value_rules({dotted: text}).get(dotted, "")
        description = text.replace(f"(must be {rule})", "").strip() if rule else text
        allowed = "; ".join(filter(None, (f"must be `{rule}`" if rule else "",
                                          registered_choices(dotted))))
        nested = isinstance(value, dict) and bool(value)
        default = "" if nested and str(key) not in cfglib.OPEN_KEYS else shown(value)
        out.append((dotted[len(section) + 1:] if section else dotted, default, description,
                    allowed))
        if nested:
            out.extend(rows(value, comments, dotted, section))
    return out


def table(entries: list[tuple]) -> list[str]:
    lines = ["| key | default | description | allowed values |", "|---|---|---|---|"]
    for key, default, description, allowed in entries:
        lines.append(f"| {cell(key, True)} | {cell(default, True)} | {cell(description)} | "
                     f"{cell(allowed)} |")
    return lines


def layer_names(problem) -> str:
    """The problem's default files, base first, as paths inside the package tree."""
    root = cfglib.CONFIG_DIR.parent
    names = []
    for path in problem.config_files():
        try:
            names.append(f"`{path.resolve().relative_to(root.resolve())}`")
        except ValueError:
            names.append(f"`{path.name}`")
    return " < ".join(names)


def plain_defaults(problem) -> dict:
    """The merged default config of ``problem``, ``???`` kept as text."""
    return OmegaConf.to_container(problem.default_config(), resolve=False)


def run_keys_section(base) -> list[str]:
    defaults, comments = plain_defaults(base), base.config_comments()
    return ["## Run keys (every problem)", "",
            "Top-level keys, given as `key=value` like any other; from "
            f"{layer_names(base)}. They are also the keyword arguments of `Problem.run()`.",
            "", *table(rows(defaults, comments)), ""]


def problem_section(name: str, problem, base_defaults: dict) -> list[str]:
    """The tables of one problem: any run key whose default it changes, then its sections,
    ``prepare_data`` first and the others in the merged defaults' order."""
    defaults, comments = plain_defaults(problem), problem.config_comments()
    summary = (problem.__doc__ or "").strip().splitlines()[0] if problem.__doc__ else ""
    lines = [f"## {name}", "", *([cell(summary), ""] if summary else []),
             f"Class `{problem.problem_name()}`; defaults {layer_names(problem)}, merged in "
             f"that order (`python -m framework config {name}` prints them).", ""]
    changed = [k for k in base_defaults if k in defaults and defaults[k] != base_defaults[k]]
    if changed:
        lines += ["### Run keys it changes", "",
                  *table(rows({k: defaults[k] for k in changed}, comments)), ""]
    sections = [k for k in defaults if isinstance(defaults[k], dict) and k not in base_defaults]
    sections.sort(key=lambda k: k != "prepare_data")
    for section in sections:
        lines += [f"### `{section}`", ""]
        if comments.get(section):
            lines += [cell(comments[section]), ""]
        entries = rows(defaults[section], comments, section, section)
        lines += [*table(entries), ""] if entries else [
            f"No keys: `{section}: {shown(defaults[section])}`.", ""]
    return lines


def render(problems: dict[str, type] | None = None) -> str:
    """The whole page for ``problems`` (name → Problem class; default: every registered
    problem)."""
    from framework.problem import Problem

    problems = registered() if problems is None else problems
    base_defaults = plain_defaults(Problem)
    lines = ["# Config reference", "",
             "<!-- Generated from the default YAML files' comments by "
             f"`{COMMAND}`; do not edit by hand. -->", "",
             "Every section is the argument of the `build_*` (or stage) method of the same "
             "name. Set a key on the command line (`section.key=value`), in a `--config` "
             "file, or as a `run()` keyword. A `???` default must be set. `conf` and "
             "`loss_conf` are open mappings: the keyword arguments of the class chosen by "
             "`name` (`section.conf={...}` replaces the whole mapping). Allowed values are "
             "checked before stage 0; every number must also be finite.", "",
             "Problems: " + ", ".join(f"[`{n}`](#{n})" for n in sorted(problems)) + ".", "",
             *run_keys_section(Problem)]
    for name in sorted(problems):
        lines += problem_section(name, problems[name], base_defaults)
    return "\n".join(lines).rstrip() + "\n"


def registered() -> dict[str, type]:
    """Every registered problem class by name; an import failure names the problem."""
    from framework.cli import load_problem, registered_problems

    out = {}
    for name in sorted(registered_problems()):
        try:
            out[name] = load_problem(name)
        except Exception as err:
            raise UserError(f"registered problem '{name}' cannot be loaded ({err}); fix it "
                            f"before regenerating the config reference") from err
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m framework.config_reference",
                                     description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", nargs="?", const=DEFAULT_OUT, type=Path, metavar="PATH",
                        help=f"write the page (default {DEFAULT_OUT})")
    action.add_argument("--check", nargs="?", const=DEFAULT_OUT, type=Path, metavar="PATH",
                        help="exit 1 if PATH differs from a fresh rendering")
    args = parser.parse_args(argv)
    try:
        page = render()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.write:
        atomic_write_text(args.write, page)
        print(f"wrote {args.write}", file=sys.stderr)
    elif args.check:
        current = args.check.read_text() if args.check.is_file() else None
        if current != page:
            print(f"{args.check} is stale; regenerate it: {COMMAND}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
