"""Command line: ``python -m framework {run,score,config,list} ...``."""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from pathlib import Path

from framework.errors import UserError
from framework.registry import closest, first_line

ENTRY_POINT_GROUP = "framework.problems"


def registered_problems() -> dict[str, str]:
    """Short name → ``module:Class`` from the ``framework.problems`` entry points."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_problem(name: str):
    """A problem class from a short name (``kws``) or ``package.module:Class``."""
    target = registered_problems().get(name, name)
    if ":" not in target:
        known = registered_problems()
        raise UserError(f"unknown problem '{name}'{closest(name, known)} Choose one of: "
                        f"{', '.join(sorted(known))}, or give module:Class")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"cannot import '{module_name}' for problem '{name}': {err}") from err
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"module '{module_name}' has no class '{class_name}'")
    return cls


def cmd_run(args) -> None:
    load_problem(args.problem)().run(config_files=args.config, dotlist=args.overrides)


def cmd_score(args) -> None:
    from framework.workspace import owner

    problem = load_problem(owner(Path(args.target_dir)))().attach(args.target_dir, args.device)
    if not hasattr(problem, "score_files"):
        raise UserError(f"{args.target_dir}: problem {problem.problem_name()} does not score "
                        "pairs of files (a speaker-verification problem does)")
    out = problem.score_files(args.wav1, args.wav2, args.checkpoint)
    verdict = "same speaker" if out["same_speaker"] else "different speakers"
    print(f"score {out['score']:.4f}  {verdict}  (threshold {out['threshold']:.4f}: the "
          f"validation EER point of {out['checkpoint']}, step {out['step']})")


def cmd_config(args) -> None:
    for path in load_problem(args.problem).config_files():
        print(f"# ---- {path.name} ----")
        print(path.read_text(), end="")


def cmd_list(args) -> None:
    from framework.models.downstream import DOWNSTREAMS
    from framework.models.upstream import UPSTREAMS

    print("problems:")
    for name in sorted(registered_problems()):
        print(f"  {name:<14} {first_line(load_problem(name))}")
    for title, registry in (("upstreams", UPSTREAMS), ("downstreams", DOWNSTREAMS)):
        print(f"{title}:")
        for name, summary in registry.summaries().items():
            print(f"  {name:<14} {summary}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m framework", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a problem's stages")
    run.add_argument("problem", help="a registered name (see `list`) or module:Class")
    run.add_argument("--config", action="append", default=[],
                     help="YAML merged over the defaults (repeatable)")
    run.add_argument("overrides", nargs="*", help="section.key=value overrides")
    run.set_defaults(func=cmd_run)
    score = sub.add_parser("score", help="speaker verification: score two audio files")
    score.add_argument("target_dir", help="a finished (evaluated) speaker-verification run")
    score.add_argument("wav1")
    score.add_argument("wav2")
    score.add_argument("--checkpoint", default="valid_best",
                       help="an evaluated checkpoint: valid_best (default) or step-N")
    score.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    score.set_defaults(func=cmd_score)
    config = sub.add_parser("config", help="print a problem's default YAML")
    config.add_argument("problem")
    config.set_defaults(func=cmd_config)
    sub.add_parser("list", help="problems, upstreams, downstreams").set_defaults(func=cmd_list)
    return top


def main(argv=None) -> None:
    top = parser()
    # Options may sit between the overrides (`run kws --config a.yaml key=value ...`), which
    # argparse's positional handling does not allow: collect the leftovers as overrides.
    args, extra = top.parse_known_args(argv)
    unknown = [item for item in extra if args.command != "run" or "=" not in item]
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
