"""Settings a seed keeps apart are never mixed: every study's claims, tables and figures on a study built
with two datasets × two backbones (the ci build's tables, each run copied into the other settings with
its values moved, so a mix would show), and the curve helper every figure uses."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from metaland.config import AggregateConfig
from metaland.plots import curves_by_algorithm
from metaland.results import TABLES, StudyTables, load_tables, stratum_of

SETTINGS = [("", "", 0.0), ("-d2", "d2", 0.05), ("-b2", "B2", -0.05), ("-d2b2", "d2 B2", 0.1)]
SECOND = "second-"
"""The second dataset of the copies: ``second-<dataset>``."""
SETTING_FREE = {("sharpmaml", "cost")}
"""Tables of numbers no setting changes: gradient evaluations per meta-iteration count the algorithm's steps."""


def test_curves_are_drawn_per_stratum_never_averaged():
    rows = pd.DataFrame(
        [
            {"run": f"{a}-{d}-{s}", "algorithm": a, "dataset": d, "backbone": "Conv4", "shots": 1, "seed": s,
             "step": step, "m": (1.0 if d == "x" else 5.0) + step}
            for a in ("maml", "fomaml") for d in ("x", "y") for s in range(2) for step in (0, 10)
        ]
    )  # fmt: skip
    fig, ax = plt.subplots()
    curves_by_algorithm(ax, rows, "m")
    lines = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
    plt.close(fig)
    assert lines == {
        "FOMAML x (2 runs)": [1.0, 11.0],
        "FOMAML y (2 runs)": [5.0, 15.0],
        "MAML x (2 runs)": [1.0, 11.0],
        "MAML y (2 runs)": [5.0, 15.0],
    }


def in_four_settings(tables: StudyTables) -> StudyTables:
    """Every run copied into a second dataset, a second backbone and both, numbers moved per setting."""
    frames = {}
    for name in TABLES:
        frame: pd.DataFrame = getattr(tables, name)
        if frame.empty:
            frames[name] = frame
            continue
        copies = []
        for suffix, change, shift in SETTINGS:
            copy = frame.assign(run=frame["run"] + suffix)
            if "d2" in change:  # a prefix: "<dataset>-2" would name a variant of the same dataset (spec_of)
                copy = copy.assign(dataset=SECOND + copy["dataset"], setting=copy["setting"] + " (2)")
            if "B2" in change:
                copy = copy.assign(backbone=copy["backbone"] + "-2")
            for column in ("query_accuracy", "value"):
                if column in copy and pd.api.types.is_float_dtype(copy[column]):
                    copy[column] = copy[column] + shift
            copies.append(copy)
        frames[name] = pd.concat(copies, ignore_index=True)
    return StudyTables(tables.study, **frames)


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_no_claim_table_or_figure_mixes_datasets_or_backbones(ci_pipeline, tmp_path):
    from metaland.claims import claims_of, evaluate_study
    from metaland.studies import STUDIES

    work, _, _ = ci_pipeline
    for study, spec in STUDIES.items():
        tables = in_four_settings(load_tables(work / "results", study))
        runs = pd.concat([tables.checkpoints, tables.final_tasks], ignore_index=True).drop_duplicates("run")
        setting_of = dict(zip(runs["run"], zip(runs["dataset"], runs["backbone"], strict=True), strict=True))
        for result in evaluate_study(claims_of(study), tables, AggregateConfig()):
            for part in result.outcome.parts:
                rows = result.rows[
                    (result.rows["component"] == part.component) & (result.rows["stratum"] == part.stratum)
                ]
                if "dataset=" not in part.stratum or rows.empty:
                    continue
                settings = {setting_of[r] for r in rows["run"]}
                if "backbone=" in part.stratum:
                    assert len(settings) == 1, (result.claim.id, part.stratum, settings)
                else:  # a comparison across backbones (depth, as the seed does): one dataset still
                    assert len({d for d, _ in settings}) == 1, (result.claim.id, part.stratum, settings)
        for table in spec.tables:
            frame = table.build(tables, AggregateConfig())
            if frame.empty or (study, table.name) in SETTING_FREE or "run" in frame:
                continue  # empty here, free of settings, or one row per run
            if "stratum" in frame:
                shown = set(frame["stratum"].str.extract(r"dataset=(\S+)")[0])
            else:
                assert "dataset" in frame, f"{study} table {table.name} names neither a stratum nor a dataset"
                shown = set(frame["dataset"])
            assert shown, (study, table.name)
            for dataset in shown:  # every dataset's copy has rows of its own: nothing pooled the two
                twin = dataset.removeprefix(SECOND) if dataset.startswith(SECOND) else SECOND + dataset
                assert twin in shown, (study, table.name, shown)
        for figure in spec.figures:
            figure.draw(tables, tmp_path / f"{study}-{figure.name}.png")
            assert (tmp_path / f"{study}-{figure.name}.png").stat().st_size > 5_000
    assert stratum_of(in_four_settings(load_tables(work / "results", "guiroy2019")).checkpoints).nunique() >= 4
