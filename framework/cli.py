"""Command line: ``python -m framework COMMAND ...``: run a problem's stages (``run``,
``sweep``), use a trained target_dir (``predict``, ``evaluate``, ``score``, ``serve``,
``export``), read runs side by side (``compare``), and look things up (``config``, ``list``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from framework.errors import UserError
from framework.interrupts import Interrupted
from framework.problems import attached_problem, load_problem, registered_problems
from framework.registry import first_line

def cmd_run(args) -> None:
    load_problem(args.problem)().run(config_files=args.config, dotlist=args.overrides)


def cmd_score(args) -> None:
    problem = attached_problem(args.target_dir, args.problem, args.device)
    if not hasattr(problem, "score_files"):
        raise UserError(f"{args.target_dir}: problem {problem.problem_name()} does not score "
                        "pairs of files (a speaker-verification problem does)")
    out = problem.score_files(args.wav1, args.wav2, args.checkpoint)
    verdict = "same speaker" if out["same_speaker"] else "different speakers"
    print(f"score {out['score']:.4f}  {verdict}  (threshold {out['threshold']:.4f}: the "
          f"validation EER point of {out['checkpoint']}, step {out['step']})")


def cmd_predict(args) -> None:
    from framework.predict import Predictor, predict_files

    predictor = Predictor(attached_problem(args.target_dir, args.problem, args.device),
                          args.checkpoint)
    failed = predict_files(predictor, args.files, args.top_k, args.csv)
    if args.csv:
        print(f"wrote {args.csv} ({len(args.files) - failed} files)", file=sys.stderr)
    if failed:
        sys.stdout.flush()
        sys.exit(1)


def cmd_evaluate(args) -> None:
    from framework.evaluate_new import NewData, evaluate_new_data
    from framework.workspace import setup_logging

    setup_logging(None)  # the console only: target_dir's log.txt is the stages' log
    data = NewData(args.manifest, args.audio_dir, args.file_column, args.label_column)
    evaluate_new_data(attached_problem(args.target_dir, args.problem, args.device), data,
                      args.name, args.checkpoint)


def cmd_serve(args) -> None:
    from framework.serve import Limits, serve

    limits = Limits(args.max_secs, args.max_mb)  # checked before anything loads
    serve(attached_problem(args.target_dir, args.problem, args.device), args.checkpoint,
          args.host, args.port, limits, args.top_k, args.concurrency)


def cmd_export(args) -> None:
    from framework.export import export_model, summary

    problem = attached_problem(args.target_dir, args.problem, "cpu")
    print(summary(export_model(problem, args.format, args.checkpoint, args.out)))


def cmd_sweep(args) -> None:
    from framework import sweep

    plan = sweep.plan_sweep(load_problem(args.problem), args.config, args.overrides)
    sweep.run_sweep(plan)
    print_comparison([str(plan.sweep_dir)], plan.sweep_dir)
    failed = sweep.failures(plan)
    if failed:
        raise UserError(f"{len(failed)} of {len(plan.points)} sweep points did not finish ("
                        + "; ".join(f"{name}: {status}" for name, status in failed.items())
                        + "); fix the cause and run the same command: finished points are "
                        "skipped")


def cmd_compare(args) -> None:
    from framework import compare

    print_comparison(args.runs, args.out or compare.default_out(args.runs))


def print_comparison(runs: list[str], out: str | Path | None) -> None:
    """Print the comparison table of ``runs``; write it into ``out`` when given."""
    from framework import compare

    table = compare.compare(runs)
    print(compare.markdown(table), end="")
    if out is None:
        print("(add --out DIR to write compare.md and compare.csv)", file=sys.stderr)
        return
    paths = compare.write(table, Path(out))
    print(f"wrote {paths['markdown']} and {paths['csv']}", file=sys.stderr)


def cmd_config(args) -> None:
    for path in load_problem(args.problem).config_files():
        print(f"# ---- {path.name} ----")
        print(path.read_text(), end="")


RUN_EXAMPLE = """example:
  python -m framework run kws target_dir=exp/kws \\
      prepare_data.dataset_root=data/speech_commands_v0.01 \\
      prepare_data.test_root=data/speech_commands_test_set_v0.01 \\
      build_optimizer.conf.lr=1e-3 stop=train

`python -m framework config PROBLEM` prints every section and key of a problem.
Progress bars: SPEECH_RECIPES_PROGRESS=bar|plain|off (or TQDM_DISABLE=1).
"""


def run_keys_help() -> str:
    """The run keys every problem shares, with their YAML comments (for ``run --help``)."""
    from omegaconf import OmegaConf

    from framework.config import resolve_config_file, yaml_comments

    path = resolve_config_file("problem.yaml")
    defaults, comments = OmegaConf.load(path), yaml_comments(path.read_text())
    lines = ["run keys (key=value; every problem has them):"]
    for key in defaults:
        value = OmegaConf.to_yaml(OmegaConf.create({"v": defaults[key]}))[3:].strip() \
            if not OmegaConf.is_missing(defaults, key) else "???"
        lines.append(f"  {f'{key}={value}':<22} {comments.get(key, '')}")
    return "\n".join(lines)


def cmd_list(args) -> None:
    from framework.models.downstream import DOWNSTREAMS
    from framework.models.upstream import UPSTREAMS

    tables = {"problems": {name: first_line(load_problem(name))
                           for name in sorted(registered_problems())},
              "upstreams": UPSTREAMS.summaries(), "downstreams": DOWNSTREAMS.summaries()}
    width = max(len(name) for table in tables.values() for name in table)
    for title, table in tables.items():
        print(f"{title}:")
        for name, summary in table.items():
            print(f"  {name:<{width}}  {summary}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m framework", description=__doc__)
    top.add_argument("--version", action=VersionAction, nargs=0,
                     help="print the version (and git commit) and exit")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a problem's stages",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=f"{run_keys_help()}\n\n{RUN_EXAMPLE}")
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
    score.add_argument("--problem", default=None,
                       help="module:Class of an unregistered problem that made target_dir")
    score.set_defaults(func=cmd_score)
    add_predict_and_evaluate(sub)
    serve = sub.add_parser("serve", help="a demo page of a trained run (needs the serve "
                           "extra: pip install speech-recipes[serve])")
    serve.add_argument("target_dir", help="a trained run (verification: also evaluated)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--checkpoint", default="valid_best", help="valid_best or step-N")
    serve.add_argument("--top-k", type=int, default=5, help="labels shown (classification)")
    serve.add_argument("--max-secs", type=float, default=30.0, help="longest clip taken")
    serve.add_argument("--max-mb", type=float, default=20.0, help="largest file taken (MB)")
    serve.add_argument("--concurrency", type=int, default=2, help="requests run at once")
    serve.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    serve.add_argument("--problem", default=None,
                       help="module:Class of an unregistered problem that made target_dir")
    serve.set_defaults(func=cmd_serve)
    export = sub.add_parser("export", help="write a trained model as TorchScript or ONNX, "
                            "checked against the framework (onnx: the export extra)")
    export.add_argument("target_dir", help="a trained run")
    export.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    export.add_argument("--checkpoint", default="valid_best",
                        help="valid_best (default), step-N, or a checkpoint file")
    export.add_argument("--out", default=None,
                        help="folder for the model and its JSON sidecar (default: "
                        "TARGET_DIR/export/CHECKPOINT)")
    export.add_argument("--problem", default=None,
                        help="module:Class of an unregistered problem that made target_dir")
    export.set_defaults(func=cmd_export)
    add_sweep_and_compare(sub)
    config = sub.add_parser("config", help="print a problem's default YAML")
    config.add_argument("problem")
    config.set_defaults(func=cmd_config)
    sub.add_parser("list", help="problems, upstreams, downstreams").set_defaults(func=cmd_list)
    return top


def add_predict_and_evaluate(sub) -> None:
    """The ``predict`` and ``evaluate`` subcommands (classification runs)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("target_dir", help="a trained classification run")
    common.add_argument("--checkpoint", default="valid_best",
                        help="valid_best (default), step-N, or a checkpoint file")
    common.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    common.add_argument("--problem", default=None,
                        help="module:Class of an unregistered problem that made target_dir")
    predict = sub.add_parser("predict", parents=[common],
                             help="classify audio files: top-k labels as JSON lines")
    predict.add_argument("files", nargs="+", help="audio files (any rate; long ones windowed)")
    predict.add_argument("--top-k", type=positive_int, default=5, help="labels per file")
    predict.add_argument("--csv", default=None,
                         help="write file,rank,label,score rows here instead of JSON lines")
    predict.set_defaults(func=cmd_predict)
    evaluate = sub.add_parser("evaluate", parents=[common], help="evaluate a trained model on "
                              "another labelled manifest or CSV: predictions, metrics, report")
    evaluate.add_argument("--manifest", required=True, help="id,wav_path,label manifest, or a "
                          "CSV of file,label (with --audio-dir, --file-column)")
    evaluate.add_argument("--name", default=None, help="output folder name (default: the "
                          "file's stem): evaluate/NAME/ and report/NAME/")
    evaluate.add_argument("--audio-dir", default=None,
                          help="folder the CSV's file column is relative to (default: the "
                          "CSV's folder)")
    evaluate.add_argument("--file-column", default=None, help="the CSV's file column (file)")
    evaluate.add_argument("--label-column", default="label", help="the label column (label)")
    evaluate.set_defaults(func=cmd_evaluate)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


SWEEP_EXAMPLE = """every override whose value is a list is an axis; the grid is their product.
A key whose own default is a list (evaluate.splits) is an axis only when given a list of
lists. Each point runs in target_dir/<name> (e.g. lr=0.001), all with one cache_dir (null:
target_dir/cache). Rerunning the same command skips finished points and resumes the rest.

example:
  python -m framework sweep kws target_dir=exp/lr 'build_optimizer.conf.lr=[1e-2,1e-3,1e-4]' \\
      prepare_data.dataset_root=data/speech_commands_v0.01 \\
      prepare_data.test_root=data/speech_commands_test_set_v0.01
"""


def add_sweep_and_compare(sub) -> None:
    """The ``sweep`` and ``compare`` subcommands (framework/sweep.py, framework/compare.py)."""
    sweep = sub.add_parser("sweep", help="run the grid of list-valued overrides, one "
                           "target_dir per point, then compare them",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=SWEEP_EXAMPLE)
    sweep.add_argument("problem", help="a registered name (see `list`) or module:Class")
    sweep.add_argument("--config", action="append", default=[],
                       help="YAML merged over the defaults (repeatable)")
    sweep.add_argument("overrides", nargs="*", help="section.key=value or key=[v1,v2,...]")
    sweep.set_defaults(func=cmd_sweep)
    compare = sub.add_parser("compare", help="one table of runs' metrics and settings, the "
                             "best marked by validation (never by test)")
    compare.add_argument("runs", nargs="+", help="target_dirs, or a sweep folder")
    compare.add_argument("--out", default=None, help="folder for compare.md and compare.csv "
                         "(default: the sweep folder when one is compared; else not written)")
    compare.set_defaults(func=cmd_compare)


def main(argv=None) -> None:
    top = parser()
    # Options may sit between the overrides (`run kws --config a.yaml key=value ...`), which
    # argparse's positional handling does not allow: collect the leftovers as overrides.
    args, extra = top.parse_known_args(argv)
    unknown = [item for item in extra if args.command not in ("run", "sweep")
               or "=" not in item]
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        args.func(args)
        sys.stdout.flush()
    except Interrupted as err:
        print(err, file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `... | head` closed the pipe: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)


class VersionAction(argparse.Action):
    """``--version``: computed only when asked (it runs git)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from framework.workspace import version_line

        print(version_line())
        parser.exit()


if __name__ == "__main__":
    main()
