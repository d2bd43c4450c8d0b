"""Aggregate: probe tables -> study tables, statistics, metrics and claim verdicts.

Writes ``results/`` as a whole (atomically):

    results/<study>/checkpoints.csv, final_tasks.csv, train_log.csv   (metaland.results)
    results/<study>/summary.csv        mean and CI over seeds, per algorithm × setting × step
    results/<study>/final.csv          per run, final checkpoint: mean and CI over tasks
    results/<study>/correlations.csv   per run: each probe metric vs accuracy and vs step
    results/<study>/<table>.csv        the study's own tables (StudySpec.tables)
    results/metrics.json               final-checkpoint numbers per run, every probe metric
    results/headline/claims/<study>.json  DVC metrics: the study's verdict counts
    results/headline/runs/<run>.json      DVC metrics: the run's final accuracy and its CI over tasks
    results/curves/{train,probe}/<run>.csv  DVC data plots: the run's training log and probed series
    results/claims.json                every claim, its statistic, rule and verdict (metaland.claims_file)
    results/claims/<study>/<claim>.csv the rows each claim's statistic read (`metaland claim <id>` recomputes it)
    results/cross_study.csv            every landscape metric vs accuracy over all studies (metaland.cross_study)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from metaland import claims_file, cross_study
from metaland.claims import claim_record, claims_of, evaluate_study, rows_csv
from metaland.config import Config, Run
from metaland.io import atomic_dir, text_digest, tree_digest, write_json, write_text
from metaland.results import STRATUM_KNOBS, build_tables, write_tables
from metaland.stats import mean_ci, pearson, spearman
from metaland.studies import STUDIES
from metaland.tracking import EXPERIMENT_PREFIX

GROUP = ["algorithm", "variant", *STRATUM_KNOBS, "setting"]
"""A summary row's identity: the algorithm and every identity knob a seed keeps apart (never averaged over)."""
NOT_METRICS = {"run", "step", "task", "n_tasks", "seed", "iterations", *GROUP}
ACCURACY = "query_accuracy"


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NOT_METRICS and pd.api.types.is_numeric_dtype(frame[c])]


def summarise(checkpoints: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Mean and CI across runs (seeds) for each algorithm × setting × step and metric."""
    rows = []
    for key, group in checkpoints.groupby([*GROUP, "step"], sort=True):
        for metric in metric_columns(checkpoints):
            ci = mean_ci(group[metric], confidence)
            rows.append(
                {
                    **dict(zip([*GROUP, "step"], key, strict=True)),
                    "metric": metric,
                    "mean": ci.mean,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "n_runs": ci.n,
                }
            )
    return pd.DataFrame(rows)


def final_table(final_tasks: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per run, at its final checkpoint: mean and CI over the fixed probe tasks."""
    rows = []
    for run, group in final_tasks.groupby("run", sort=True):
        for metric in metric_columns(final_tasks):
            ci = mean_ci(group[metric], confidence)
            rows.append(
                {
                    "run": run,
                    "step": int(group["step"].iloc[0]),
                    "metric": metric,
                    "mean": ci.mean,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "n_tasks": ci.n,
                }
            )
    return pd.DataFrame(rows)


def correlation_table(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """Per run: Pearson/Spearman of each metric with accuracy and Spearman with the step."""
    rows = []
    for run, group in checkpoints.groupby("run", sort=True):
        for metric in metric_columns(checkpoints):
            with_acc, rank_acc = pearson(group[metric], group[ACCURACY]), spearman(group[metric], group[ACCURACY])
            with_step = spearman(group["step"], group[metric])
            rows.append(
                {
                    "run": run,
                    "metric": metric,
                    "n_checkpoints": with_acc.n,
                    "pearson_r_accuracy": with_acc.r,
                    "pearson_p_accuracy": with_acc.p,
                    "spearman_rho_accuracy": rank_acc.r,
                    "spearman_p_accuracy": rank_acc.p,
                    "spearman_rho_step": with_step.r,
                    "spearman_p_step": with_step.p,
                }
            )
    return pd.DataFrame(rows)


def run_metrics(final: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{run: {metric: mean, metric_ci_low: ..., ...}}`` for results/metrics.json."""
    metrics: dict[str, dict[str, float]] = {}
    for row in final.itertuples():
        entry = metrics.setdefault(row.run, {"step": int(row.step)})
        entry[row.metric] = _round(row.mean)
        if row.metric == ACCURACY:
            entry[f"{ACCURACY}_ci_low"], entry[f"{ACCURACY}_ci_high"] = _round(row.ci_low), _round(row.ci_high)
    return metrics


def headline(record: dict, metrics: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """The few numbers `dvc metrics show` prints, one small file per study and per run (a row each):
    ``{"claims/<study>.json": {holds, fails, inconclusive, checks, checks_holding}, "runs/<run>.json":
    {accuracy, ci_low, ci_high, step}}``. Counts are of findings; sanity checks are counted apart."""
    files = {
        f"claims/{study}.json": {
            **counts["findings"],
            "checks": sum(counts["checks"].values()),
            "checks_holding": counts["checks"]["holds"],
        }
        for study, counts in record["by_study"].items()
    }
    for runs in metrics.values():
        for run, values in runs.items():
            files[f"runs/{run}.json"] = {
                "accuracy": values.get(ACCURACY),
                "ci_low": values.get(f"{ACCURACY}_ci_low"),
                "ci_high": values.get(f"{ACCURACY}_ci_high"),
                "step": values["step"],
            }
    return files


def run_curves(tables) -> dict[str, str]:
    """Each run's training log and probed checkpoint series (the columns from ``step`` on), one CSV
    per run: dvc.yaml declares the folders as data plots, which draw one line per revision, so
    `dvc plots diff` compares experiments run by run."""
    files = {}
    for kind, frame in (("train", tables.train_log), ("probe", tables.checkpoints)):
        for run, rows in frame.groupby("run", sort=True) if not frame.empty else ():
            files[f"{kind}/{run}.csv"] = rows.loc[:, "step":].to_csv(index=False, lineterminator="\n")
    return files


def _round(value: float) -> float | None:
    return None if pd.isna(value) else round(float(value), 6)


def aggregate(
    config: Config,
    probes_dir: Path,
    runs_dir: Path,
    results_dir: Path,
    probe_run_id: Callable[[Run, str], str | None] | None = None,
) -> dict:
    """Build every study's tables and claims into ``results_dir``; return the claims record.

    ``probe_run_id(run, digest)`` names the MLflow run of the probe stage that wrote
    ``probes/<run>/`` with that :func:`~metaland.io.tree_digest` (None: not known); each claim
    records them for its input runs (:mod:`metaland.claims_file`)."""
    metrics: dict = {}
    claims: list[dict] = []
    checkpoints: dict[str, pd.DataFrame] = {}
    with atomic_dir(results_dir) as out:
        for name in config.studies_with_runs():
            study = config.studies[name]
            runs = config.runs_of(name)
            tables = build_tables(name, runs, probes_dir, runs_dir)
            folder = out / name
            write_tables(tables, folder)
            for path, text in run_curves(tables).items():
                write_text(out / "curves" / path, text)
            confidence = study.aggregate.confidence
            final = final_table(tables.final_tasks, confidence)
            for stem, frame in (
                ("summary", summarise(tables.checkpoints, confidence)),
                ("final", final),
                ("correlations", correlation_table(tables.checkpoints)),
            ):
                write_text(folder / f"{stem}.csv", frame.to_csv(index=False, lineterminator="\n"))
            for table in STUDIES.get(name).tables:
                frame = table.frame(tables, study.aggregate)
                write_text(folder / f"{table.name}.csv", frame.to_csv(index=False, lineterminator="\n"))
            metrics[name] = run_metrics(final)
            mlflow = _mlflow_runs(name, runs, probes_dir, probe_run_id)
            for result in evaluate_study(claims_of(name), tables, study.aggregate):
                path = f"claims/{name}/{result.claim.slug}.csv"
                text = rows_csv(result.rows)
                write_text(out / path, text)
                record = claim_record(result, path, text_digest(text), tables, study.aggregate)
                claims.append({**record, "profile": config.profile, "mlflow": mlflow})
            checkpoints[name] = tables.checkpoints
        record = claims_file.summary(config.profile, claims)
        claims_file.validate(record)
        points = cross_study.pooled(checkpoints)
        write_text(out / "cross_study.csv", cross_study.correlations(points).to_csv(index=False, lineterminator="\n"))
        write_json(out / "metrics.json", metrics)
        for path, values in headline(record, metrics).items():
            write_json(out / "headline" / path, values)
        write_json(out / "claims.json", record)
    return record


def _mlflow_runs(study: str, runs: list[Run], probes_dir: Path, probe_run_id) -> dict:
    """The study's MLflow experiment and, per run, the probe-stage run that wrote its probe tables."""
    ids = {
        run.key: probe_run_id(run, tree_digest(Path(probes_dir) / run.key)) if probe_run_id else None for run in runs
    }
    return {"experiment": f"{EXPERIMENT_PREFIX}/{study}", "probe_runs": ids}
