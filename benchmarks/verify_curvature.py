"""The curvature probe's recorded values against ARPACK, on every probed task of a built pipeline.

For every run whose probe set includes ``curvature`` (of the studies named, default all), this
reloads each probed checkpoint and its fixed tasks as the probe stage does
(``metaland.probes.runner.RunProbes``), adapts the first k tasks, and computes λ_max and λ_min of
each task's support-loss Hessian at θ̃_i with scipy's ``eigsh`` on float64 double-backward
Hessian-vector products: the tests' oracle (``tests/reference.py``), independent of the probe's
Lanczos and of its float32 forward-over-reverse products. It compares ``probes/<run>/tasks.csv``
with them and prints, per run and over all, the largest relative difference of ‖H‖_σ per task and
of the per-checkpoint means, and of λ_max and λ_min relative to ‖H‖_σ (the probe's certificate
bounds each end's error by tol · ‖H‖_σ).

Usage, in a checkout whose probe stages ``dvc repro`` built::

    python benchmarks/verify_curvature.py --study guiroy2019

``--column`` compares another per-task column with ‖H‖_σ instead (a table written before the probe
recorded both ends had ``hessian_top_eigenvalue``, the signed eigenvalue of largest magnitude).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pandas as pd
import torch

from metaland.checkpoints import Checkpoint
from metaland.config import load_params, probe_name
from metaland.extract import read_manifest
from metaland.io import read_json
from metaland.probes.runner import RunProbes

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the ARPACK oracle is the tests' own
from tests.reference import autograd_hessian_operator, eigsh_extremes


def oracle_ends(context, k: int) -> torch.Tensor:
    """[k, 2] (λ_max, λ_min) of the support-loss Hessian at θ̃_i of the context's first k tasks."""
    _, adapted = context.adaptation()
    batch = context.batch
    ends = []
    for i in range(k):
        params = {name: value[i] for name, value in adapted.items()}
        operator = autograd_hessian_operator(context.loss, params, batch.support_x[i], batch.support_y[i])
        ends.append(eigsh_extremes(operator, seed=i, tol=1e-9))
    return torch.tensor(ends, dtype=torch.float64)


def verify_run(run, study, root: Path, column: str) -> pd.DataFrame:
    """One row per probed task: the recorded values and ARPACK's."""
    device = torch.device("cpu")
    setup = RunProbes.build(run, study, root / "data" / run.dataset, device)
    recorded = pd.read_csv(root / "probes" / run.key / "tasks.csv")
    manifest = read_manifest(root / "checkpoints" / run.key)
    rows = []
    for entry in manifest["checkpoints"]:
        path = root / "checkpoints" / run.key / entry["file"]
        step = entry["step"]
        mine = recorded[(recorded["step"] == step) & recorded[column].notna()].sort_values("task")
        context = setup.contexts(Checkpoint(path, read_json(path.with_suffix(".json"))), step, device)
        truth = oracle_ends(context[(run.dataset, study.probe.split)], len(mine))
        for (_, row), (top, bottom) in zip(mine.iterrows(), truth.tolist(), strict=True):
            rows.append(
                {
                    "run": run.key,
                    "step": step,
                    "task": row["task"],
                    "recorded": row[column],
                    "lambda_max": row.get("hessian_lambda_max"),
                    "lambda_min": row.get("hessian_lambda_min"),
                    "eigsh_lambda_max": top,
                    "eigsh_lambda_min": bottom,
                    "eigsh_norm": max(abs(top), abs(bottom)),
                }
            )
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame) -> dict[str, float]:
    norm = frame["eigsh_norm"]
    means = frame.groupby(["run", "step"])[["recorded", "eigsh_norm"]].mean()
    out = {
        "tasks": len(frame),
        "max rel. diff ‖H‖σ per task": ((frame["recorded"] - norm).abs() / norm).max(),
        "max rel. diff ‖H‖σ checkpoint mean": ((means["recorded"] / means["eigsh_norm"]) - 1).abs().max(),
        "tasks with the recorded value below eigsh": (frame["recorded"] < norm).mean(),
    }
    if frame["lambda_max"].notna().all():
        out["max |Δλ_max| / ‖H‖σ"] = ((frame["lambda_max"] - frame["eigsh_lambda_max"]).abs() / norm).max()
        out["max |Δλ_min| / ‖H‖σ"] = ((frame["lambda_min"] - frame["eigsh_lambda_min"]).abs() / norm).max()
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
@click.option("--study", "studies", multiple=True, help="Studies to check (default: every study that has runs).")
@click.option("--run", "run_keys", multiple=True, help="Only these runs (default: every run of those studies).")
@click.option("--column", default="hessian_spectral_norm", show_default=True, help="Per-task column compared.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also write every task's row here.")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
def main(root: Path, studies: tuple[str, ...], run_keys: tuple[str, ...], column: str, out: Path | None, threads: int):
    """Compare the recorded curvature of every probed task with ARPACK's eigsh; print the differences."""
    torch.set_num_threads(threads)
    config = load_params(root / "params.yaml")
    frames = []
    for name in studies or config.studies_with_runs():
        study = config.studies[name]
        for run in config.runs_of(name):
            if "curvature" not in {probe_name(key) for key in study.probes_for(run)}:
                continue
            if run_keys and run.key not in run_keys:
                continue
            if not (root / "probes" / run.key / "tasks.csv").is_file():
                click.echo(f"{run.key}: skipped, not probed in this build (`dvc repro probe@{run.key}`)")
                continue
            frame = verify_run(run, study, root, column)
            frames.append(frame)
            click.echo(f"{run.key}: " + ", ".join(f"{k} {v:.3g}" for k, v in summarise(frame).items()))
    everything = pd.concat(frames, ignore_index=True)
    click.echo("all runs: " + ", ".join(f"{k} {v:.3g}" for k, v in summarise(everything).items()))
    if out is not None:
        everything.to_csv(out, index=False)


if __name__ == "__main__":
    main()
