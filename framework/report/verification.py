"""The report page of a speaker-verification problem: ``report.md``, ``report.json`` and two
PNGs (a DET curve and score histograms).

Input is one record per (checkpoint, split): ``{"checkpoint", "split", "step", "metrics",
"scores_csv"}`` with the metrics of
:func:`framework.metrics.verification.verification_metrics` and a ``scores.csv`` of columns
``id1, id2, label, score``. The split ``valid`` chooses the checkpoint (lowest EER,
:func:`best_by_valid_eer`); every other split is a test trial list (e.g. ``veri_test2``) and
is only reported, never used to choose. Optionally the page also shows the training setup and
curves (:func:`framework.report.summary.training_summary`) and the data: utterances, speakers
and trials per split (:func:`split_counts`) and the trials stage 0 dropped.

>>> records = [{"checkpoint": "step-1000", "split": "valid", "metrics": {"eer": 0.08}},
...            {"checkpoint": "step-1000", "split": "veri_test2", "metrics": {"eer": 0.01}},
...            {"checkpoint": "step-2000", "split": "valid", "metrics": {"eer": 0.05}}]
>>> best_by_valid_eer(records)   # the test split's 1 % plays no part
'step-2000'
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines; never open a window
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from framework.audio.dataset import read_manifest  # noqa: E402
from framework.metrics.verification import det_points, eer, load_scores  # noqa: E402
from framework.report.markdown import link, md_row, num, pct, text  # noqa: E402
from framework.report.summary import md_training, training_json, write_training_figures  # noqa: E402,E501

VALID = "valid"
CURVE_METRICS = ["eer", "min_dcf_0.01", "min_dcf_0.05"]  # validation curves drawn
N_SHOWN_EXCLUDED = 5  # unusable utterances named on the page (all are in report.json)
DET_PNG, HISTOGRAM_PNG = "det_curve.png", "score_histogram.png"
# Probabilities a DET axis may be ticked at; the shown range is chosen from the data.
DET_TICKS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4,
             0.6, 0.8, 0.9, 0.95, 0.98, 0.99)


def write_verification_report(out_dir: str | Path, results: list[dict], best: dict | None,
                              title: str, training: dict | None = None,
                              data: dict | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.json``, ``det_curve.png`` and ``score_histogram.png``
    (and ``training_curves.png`` when ``training`` is given).

    ``results``: records as in the module docstring; the table keeps their order. ``best``:
    the ``valid`` record of the chosen checkpoint (``None``: chosen here by
    :func:`best_by_valid_eer`). The figures read the chosen checkpoint's ``scores_csv`` files.

    ``training``: :func:`framework.report.summary.training_summary` of the run. ``data``:
    ``{"splits": split_counts(...), "dropped_trials": {split: drop record} or None}`` (drop
    records as returned by :func:`framework.verification.drop_unusable_trials`; ``None``: not
    recorded). Either adds its section to both files; ``None`` leaves it out.

    Returns ``{"report_md", "report_json", "det_curve_png", "score_histogram_png"}`` (+
    ``"training_curves_png"``) → written paths. Raises ``ValueError`` when there is no
    ``valid`` record, ``best`` is not one, or the chosen checkpoint has no test split.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = chosen_records(results, best)
    tables = {record["split"]: load_scores(record["scores_csv"])
              for record in [chosen["valid"], *chosen["tests"]]}
    headline = [headline_entry(record, tables[record["split"]], chosen["valid"])
                for record in chosen["tests"]]
    paths = {"report_md": out_dir / "report.md", "report_json": out_dir / "report.json",
             "det_curve_png": out_dir / DET_PNG, "score_histogram_png": out_dir / HISTOGRAM_PNG}
    plot_det_curves(tables, paths["det_curve_png"], f"{title}: {chosen['name']}")
    plot_score_histograms({entry["split"]: tables[entry["split"]] for entry in headline},
                          headline, paths["score_histogram_png"],
                          f"{title}: {chosen['name']}")
    if training is not None:
        paths.update({f"{name}_png": path for name, path in write_training_figures(
            training, out_dir, CURVE_METRICS, chosen["step"], title).items()})
    report = {**_report_json(results, chosen, headline, title), **_extra_json(training, data)}
    paths["report_json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths["report_md"].write_text(render_markdown(results, chosen, headline, title, out_dir,
                                                  training, data))
    return paths


def best_by_valid_eer(results: list[dict]) -> str:
    """Name of the checkpoint whose ``valid`` record has the lowest EER.

    Ties go to the earliest record in ``results``. Test splits are never looked at.
    Raises ``ValueError`` when no record has split ``valid``.
    """
    valid = [record for record in results if record["split"] == VALID]
    if not valid:
        splits = sorted({record["split"] for record in results})
        raise ValueError(f"no '{VALID}' results to choose a checkpoint from "
                         f"(splits present: {', '.join(splits) or 'none'}); evaluate the "
                         "validation trials too")
    return min(valid, key=lambda record: record["metrics"]["eer"])["checkpoint"]


def chosen_records(results: list[dict], best: dict | None) -> dict:
    """``{"name", "step", "valid": record, "tests": [records]}`` of the chosen checkpoint,
    tests in ``results`` order."""
    name = best_by_valid_eer(results) if best is None else best["checkpoint"]
    if best is not None and best.get("split") != VALID:
        raise ValueError(f"best must be a '{VALID}' record: the checkpoint is chosen on "
                         f"validation, never on test (got split {best.get('split')!r})")
    mine = [record for record in results if record["checkpoint"] == name]
    valid = [record for record in mine if record["split"] == VALID]
    tests = [record for record in mine if record["split"] != VALID]
    if not valid or not tests:
        raise ValueError(f"checkpoint {name!r} needs a '{VALID}' result and at least one "
                         f"test result; it has splits: "
                         f"{', '.join(record['split'] for record in mine) or 'none'}")
    return {"name": name, "step": valid[0].get("step"), "valid": valid[0], "tests": tests}


def headline_entry(record: dict, table, valid: dict) -> dict:
    """A test record of the chosen checkpoint plus its error rates at the *validation* EER
    threshold: what a deployed system (which cannot tune on test) would see."""
    threshold = valid["metrics"]["eer_threshold"]
    accepted = table["score"].to_numpy(dtype=float) >= threshold
    target = table["label"].to_numpy() == 1
    return {"split": record["split"], "metrics": record["metrics"],
            "scores_csv": str(record.get("scores_csv", "")),
            "at_valid_threshold": {"threshold": float(threshold),
                                   "p_miss": float(np.mean(~accepted[target])),
                                   "p_fa": float(np.mean(accepted[~target]))}}


def _report_json(results: list[dict], chosen: dict, headline: list[dict], title: str) -> dict:
    """Everything the page shows, machine-readable; paths become strings."""
    def plain(record: dict) -> dict:
        return {**record, "scores_csv": str(record.get("scores_csv", ""))}

    return {"title": title,
            "chosen": {"checkpoint": chosen["name"], "step": chosen["step"],
                       "rule": f"lowest EER on '{VALID}'", "valid": plain(chosen["valid"])},
            "headline": headline,
            "results": [plain(record) for record in results],
            "figures": {"det_curve": DET_PNG, "score_histogram": HISTOGRAM_PNG}}


def _extra_json(training: dict | None, data: dict | None) -> dict:
    """The optional sections of ``report.json``: ``config`` and ``training`` (curves PNG,
    history file and record counts), ``data`` (as given)."""
    extra = training_json(training) if training is not None else {}
    if data is not None:
        extra["data"] = data
    return extra


def split_counts(manifests: dict) -> dict[str, dict]:
    """Per split (``manifests``: split → CSV, as stage 0 wrote them): ``train`` →
    ``{"utterances", "speakers"}`` (its ``spk`` column); each trial list ``X`` with an
    ``X_utts`` manifest → ``{"utterances", "speakers", "trials", "target", "nontarget"}``
    (speaker: an utterance id's first path component, VoxCeleb's ``id1xxxx/...``; ``None``
    when an id has none)."""
    counts = {}
    for split, csv in manifests.items():
        if split == "train":
            train = read_manifest(csv)
            counts[split] = {"utterances": len(train), "speakers": int(train["spk"].nunique())}
        elif f"{split}_utts" in manifests:
            counts[split] = _trial_counts(csv, manifests[f"{split}_utts"])
    return counts


def _trial_counts(trials_csv, utts_csv) -> dict:
    trials, ids = read_manifest(trials_csv), read_manifest(utts_csv)["id"]
    speakers = int(ids.str.split("/").str[0].nunique()) if ids.str.contains("/").all() \
        else None
    target = int(trials["label"].astype(int).sum())
    return {"utterances": len(ids), "speakers": speakers, "trials": len(trials),
            "target": target, "nontarget": len(trials) - target}


# --- report.md ------------------------------------------------------------------------------


def render_markdown(results: list[dict], chosen: dict, headline: list[dict], title: str,
                    out_dir: Path, training: dict | None = None,
                    data: dict | None = None) -> str:
    """The text of ``report.md``; links are relative to ``out_dir``."""
    sections = [f"# {title}", _md_headline(chosen, headline),
                _md_results(results, chosen, out_dir), _md_figures(),
                _md_data(data) if data is not None else None,
                md_training(training) if training is not None else None, _md_notes()]
    return "\n\n".join(section for section in sections if section) + "\n"


def _md_headline(chosen: dict, headline: list[dict]) -> str:
    valid = chosen["valid"]["metrics"]
    step = f" (step {chosen['step']})" if chosen["step"] is not None else ""
    lines = [f"**Chosen checkpoint: `{chosen['name']}`{step}**, the lowest validation EER "
             f"({pct(valid['eer'])} on {_count(valid['n_trials'])} trials). On test:", "",
             md_row(["Test split", "EER", "minDCF 0.01", "minDCF 0.05",
                      "Trials (target / non-target)", "EER threshold"]),
             md_row(["---"] + ["---:"] * 5)]
    for entry in headline:
        m = entry["metrics"]
        lines.append(md_row([f"`{entry['split']}`", f"**{pct(m['eer'])}**",
                              num(m["min_dcf_0.01"]), num(m["min_dcf_0.05"]),
                              _trials(m), num(m["eer_threshold"])]))
    lines.append("")
    for entry in headline:
        at = entry["at_valid_threshold"]
        lines.append(f"- At the validation EER threshold ({num(at['threshold'])}), "
                     f"`{entry['split']}` misses {pct(at['p_miss'])} of target trials and "
                     f"accepts {pct(at['p_fa'])} of non-target trials.")
    return "\n".join(lines)


def _md_results(results: list[dict], chosen: dict, out_dir: Path) -> str:
    header = ["Checkpoint", "Step", "Split", "EER", "minDCF 0.01", "minDCF 0.05",
              "Trials (target / non-target)", "EER threshold", "Scores"]
    lines = ["## All checkpoints", "", md_row(header),
             md_row(["---"] * 3 + ["---:"] * 5 + ["---"])]
    for record in results:
        m = record["metrics"]
        star = " ★" if record["checkpoint"] == chosen["name"] else ""
        lines.append(md_row([f"`{record['checkpoint']}`{star}", text(record.get("step")),
                              f"`{record['split']}`", pct(m["eer"]), num(m["min_dcf_0.01"]),
                              num(m["min_dcf_0.05"]), _trials(m), num(m["eer_threshold"]),
                              link(record.get("scores_csv"), out_dir, "csv")]))
    return "\n".join(lines + ["", "★ = chosen checkpoint."])


def _md_figures() -> str:
    return "\n".join([
        "## Figures (chosen checkpoint)", "",
        f"![DET curve: miss rate against false acceptance rate]({DET_PNG})", "",
        f"![Target and non-target score histograms on test]({HISTOGRAM_PNG})"])


def _md_data(data: dict) -> str:
    """Utterances, speakers and trials per split, then what stage 0 dropped and why."""
    dropped = data.get("dropped_trials")
    lines = ["## Data", "", md_row(["Split", "Utterances", "Speakers",
                                    "Trials (target / non-target)", "Trials dropped"]),
             md_row(["---"] + ["---:"] * 4)]
    for split, c in data["splits"].items():
        trials = (f"{_count(c['trials'])} ({_count(c['target'])} / {_count(c['nontarget'])})"
                  if "trials" in c else "—")
        gone = (dropped or {}).get(split)
        lines.append(md_row([f"`{split}`", _count(c["utterances"]), text(c["speakers"]),
                             trials, _count(gone["dropped"]) if gone else "—"]))
    return "\n".join(lines + ["", _md_dropped(dropped)])


def _md_dropped(dropped: dict | None) -> str:
    if dropped is None:
        return ("Trials dropped at stage 0: not recorded (the data was prepared before this "
                "was kept; rerun stage 0 with `force=true` to record it).")
    hit = {split: d for split, d in dropped.items() if d["dropped"]}
    if not hit:
        return "No trial was dropped: every utterance the trial lists name has usable audio."
    lines = []
    for split, d in hit.items():
        bad = d["excluded_utterances"]
        shown = "; ".join(f"`{u['id']}`: {u['reason'].rstrip('.') or 'reason not recorded'}"
                          for u in bad[:N_SHOWN_EXCLUDED])
        more = f"; and {len(bad) - N_SHOWN_EXCLUDED} more" if len(bad) > N_SHOWN_EXCLUDED else ""
        lines.append(f"- `{split}`: {_count(d['dropped'])} of {_count(d['listed'])} listed "
                     f"trials dropped at stage 0, because they name {len(bad)} utterance(s) "
                     f"whose audio is unusable (listed in `data/excluded.csv`): {shown}{more}.")
    return "\n".join(lines)


def _md_notes() -> str:
    return "\n".join([
        "## Notes", "",
        "- The checkpoint is chosen by validation EER alone; test trials never choose "
        "anything, so the test figures are not tuned to them.",
        "- EER: where the miss and false acceptance rates are equal, interpolated linearly "
        "between the two operating points around the crossing. minDCF: NIST SRE normalised "
        "minimum detection cost, C_miss = C_fa = 1, P_target 0.01 or 0.05; 1.0 is no better "
        "than the better fixed decision (at these P_target, rejecting every trial).",
        "- EER threshold: a trial is accepted (same speaker) when its score is at or above "
        "it. Each split's threshold is computed on that split's own scores, which a real "
        "system cannot do; the validation threshold is the one to deploy, and the error "
        "rates it gives on test are stated under the headline table."])


# --- det_curve.png and score_histogram.png --------------------------------------------------


def probit(p) -> np.ndarray:
    """Standard normal deviate (inverse CDF) of each probability, clipped to [1e-9, 1 - 1e-9]
    so rates of exactly 0 or 1 land far off the axes instead of at infinity.

    >>> probit([0.5, 0.8413447]).round(3).tolist()
    [0.0, 1.0]
    """
    clipped = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return torch.special.ndtri(torch.from_numpy(clipped)).numpy()


def plot_det_curves(tables: dict, path: str | Path, title: str = "") -> Path:
    """One DET curve per ``{split: scores table}`` on normal-deviate axes, ticked in %,
    with each curve's EER marked where it meets the P_miss = P_fa diagonal."""
    curves = {split: det_points(t["score"], t["label"])[:2] for split, t in tables.items()}
    rates = {split: eer(t["score"], t["label"])[0] for split, t in tables.items()}
    low, high = _det_range(tables, curves, max(rates.values()))
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    ax.plot(probit([low, high]), probit([low, high]), color="0.7", lw=0.8, ls="--")
    for split, (p_fa, p_miss) in curves.items():
        line, = ax.plot(probit(p_fa), probit(p_miss), lw=1.6,
                        label=f"{split} (EER {pct(rates[split])})")
        ax.plot(*probit([rates[split]] * 2), "o", color=line.get_color(), ms=5)
    ticks = [t for t in DET_TICKS if low <= t <= high]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_ticks(probit(ticks), [f"{100 * t:g}" for t in ticks], fontsize=8)
    ax.set(xlim=probit([low, high]), ylim=probit([low, high]), aspect="equal",
           xlabel="False acceptance rate (%)", ylabel="Miss rate (%)", title=title)
    ax.grid(True, color="0.9")
    ax.legend(loc="upper right")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _det_range(tables: dict, curves: dict, worst_eer: float) -> tuple[float, float]:
    """Axis limits (probabilities): up to 40 % or, for weak systems, twice the worst EER;
    down to where the curves leave that square (not below the finest rate the smallest
    class can show, nor 0.01 %), and at least to 1 %, so there is always a decade to read."""
    high = min([t for t in DET_TICKS if t >= max(0.4, 2 * worst_eer)] or [DET_TICKS[-1]])
    finest = min(1 / min(int((t["label"] == 1).sum()), int((t["label"] == 0).sum()))
                 for t in tables.values())
    reached = [rate for p_fa, p_miss in curves.values()
               for rate in (p_fa[(p_miss <= high) & (p_fa > 0)],
                            p_miss[(p_fa <= high) & (p_miss > 0)]) if rate.size]
    lowest = min([float(rate.min()) for rate in reached] or [finest])
    low = max([t for t in DET_TICKS if t <= min(max(lowest, finest), 0.01)] or [DET_TICKS[0]])
    return low, high


def plot_score_histograms(tables: dict, headline: list[dict], path: str | Path,
                          title: str = "") -> Path:
    """Target and non-target score densities, one panel per test split, with the split's
    own EER threshold (solid) and the validation EER threshold (dashed)."""
    fig, axes = plt.subplots(1, len(headline), figsize=(6 * len(headline), 4),
                             layout="constrained", squeeze=False)
    for ax, entry in zip(axes[0], headline):
        table, m = tables[entry["split"]], entry["metrics"]
        scores, target = table["score"].to_numpy(dtype=float), table["label"].to_numpy() == 1
        bins = np.histogram_bin_edges(scores, bins=60)
        ax.hist(scores[~target], bins=bins, density=True, alpha=0.55, label="non-target")
        ax.hist(scores[target], bins=bins, density=True, alpha=0.55, label="target")
        ax.axvline(m["eer_threshold"], color="k", lw=1.2,
                   label=f"EER threshold {num(m['eer_threshold'])}")
        ax.axvline(entry["at_valid_threshold"]["threshold"], color="k", lw=1.0, ls="--",
                   label="validation EER threshold")
        ax.set(title=f"{entry['split']}: EER {pct(m['eer'])}", xlabel="score",
               ylabel="density")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# --- small formatting helpers ---------------------------------------------------------------


def _trials(m: dict) -> str:
    return f"{_count(m['n_trials'])} ({_count(m['n_target'])} / {_count(m['n_nontarget'])})"


def _count(value: int) -> str:
    return f"{value:,}"

