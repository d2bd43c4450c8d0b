"""False-``holds`` rates of the claim rules before and after seed-level inference, on the same simulated
studies (metaland.calibration): the table of docs/claims.md.

    python benchmarks/claims_calibration.py [--studies 1000] [--seed 0]

For every rule family it simulates studies under the null (and at a true effect of 3 between-seed s.d.),
and decides each study twice: with the rule metaland uses now (the family's ``decide``: one value per
run, t over seeds, a claim p of 2 × min of the one-sided p-values) and with the rule metaland used until
commit 02fddcf, re-expressed here on the same rows (tasks × seeds pooled as replicates, or a
per-run test over checkpoints that every run must pass). The old rules are written out only here, for
this comparison; nothing in the package uses them.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy import stats as sps

from metaland.calibration import Design, simulate, verdicts
from metaland.config import AggregateConfig
from metaland.stats import mean_ci

ALPHA = 0.05
MIN_RHO = 0.5


def _studies(rows: pd.DataFrame):
    return rows.groupby("stratum", sort=True)


def _pooled_ci_above(values: np.ndarray, threshold: float = 0.0) -> bool:
    return mean_ci(values, 0.95).low > threshold


def _spearman(x, y):
    result = sps.spearmanr(x, y)
    return result.statistic, result.pvalue


def _every_run(study: pd.DataFrame, passes) -> bool:
    return all(passes(run.sort_values("step")) for _, run in study.groupby("run"))


OLD_FAMILIES = ("across-runs", "after-peak", "association", "contrast", "equivalence", "level", "peak", "trend")
"""The families that had a rule before 02fddcf (no-trend and association-gap came later: nothing to compare)."""


def old_holds(family: str, rows: pd.DataFrame) -> list[bool]:
    """The 02fddcf rules: pooled CIs over tasks × seeds; per-run Spearman over checkpoints, every run."""
    out = []
    for _, study in _studies(rows):
        if family == "contrast":  # improves_on: CI over every paired task of every seed
            wide = study.pivot_table(index=["seed", "unit"], columns="arm", values="value")
            out.append(_pooled_ci_above((wide["treatment"] - wide["baseline"]).to_numpy()))
        elif family == "level":  # mean_exceeds: CI over tasks × seeds above the threshold
            out.append(_pooled_ci_above(study["value"].to_numpy()))
        elif family == "equivalence":  # mean_within: the pooled CI inside the band
            ci = mean_ci(study["value"].to_numpy(), 0.95)
            out.append(ci.low >= -3.0 and ci.high <= 3.0)
        elif family == "trend":  # trend: ρ ≥ 0.5 with p < α in every run
            out.append(_every_run(study, lambda r: (lambda c: c[0] >= MIN_RHO and c[1] < ALPHA)(
                _spearman(r["step"], r["value"]))))  # fmt: skip
        elif family == "association":  # correlation: r > 0 with p < α in every run
            out.append(_every_run(study, lambda r: (lambda c: c[0] > 0 and c[1] < ALPHA)(_spearman(r["x"], r["y"]))))
        elif family == "peak":  # peak_then_fall: interior argmax, then ρ ≤ −0.5 with p < α, every run

            def peak(r):
                v = r["value"].to_numpy()
                k = int(v.argmax())
                rho, p = _spearman(r["step"].iloc[k:], r["value"].iloc[k:]) if len(v) - k >= 3 else (np.nan, 1.0)
                return 0 < k < len(v) - 1 and -rho >= MIN_RHO and p < ALPHA

            out.append(_every_run(study, peak))
        elif family == "after-peak":  # falls_after_peak_of: after the reference's argmax, every run

            def after(r):
                k = int(r["reference"].to_numpy().argmax())
                if len(r) - k < 3:
                    return False
                rho, p = _spearman(r["step"].iloc[k:], r["value"].iloc[k:])
                return -rho >= MIN_RHO and p < ALPHA

            out.append(_every_run(study, after))
        elif family == "across-runs":  # Pearson r across runs, scipy's t-approximation p
            result = sps.pearsonr(study["x"], study["y"])
            out.append(result.statistic > 0 and result.pvalue < ALPHA)
    return out


def rates(family: str, effect: float, design: Design, studies: int, seed: int) -> tuple[float, float]:
    rows = simulate(family, effect, design, studies, np.random.default_rng(seed))
    new = np.mean([v == "holds" for v in verdicts(rows, family, AggregateConfig())])
    return float(np.mean(old_holds(family, rows))), float(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000, help="Simulated studies per cell.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    header = (
        "| rule family | old rule, null, 1 seed | old rule, null, 5 seeds | new rule, null, 5 seeds "
        "| old rule, 3 s.d., 5 seeds | new rule, 3 s.d., 5 seeds |"
    )
    print(header)
    print("|---|---:|---:|---:|---:|---:|")
    for family in OLD_FAMILIES:
        if family == "across-runs":
            one = (float("nan"), float("nan"))
        else:
            one = rates(family, 0.0, Design(seeds=1), args.studies, args.seed)
        five = rates(family, 0.0, Design(seeds=5), args.studies, args.seed + 1)
        power = rates(family, 3.0, Design(seeds=5), args.studies, args.seed + 2)
        cells = [one[0], five[0], five[1], power[0], power[1]]
        print(f"| {family} | " + " | ".join("—" if np.isnan(c) else f"{c:.1%}" for c in cells) + " |")
    print(f"\n{args.studies} simulated studies per cell (metaland.calibration; seed {args.seed}); α = {ALPHA}.")


if __name__ == "__main__":
    main()
