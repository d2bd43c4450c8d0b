"""The reproduction report and results/claims.json, as a researcher reads them after `dvc repro`.

Rendered by the ci-profile build the "dag" tests share (conftest.ci_pipeline), so this adds no
DAG build: every claim of every study appears in report/index.html and its Markdown twin
report/index.md with its verdict; claims.json validates against its schema (metaland.claims_file)
and names the MLflow probe runs that wrote its inputs; every image and local link resolves and
nothing is loaded from the network; the cross-study table's rank correlations equal scipy's on the
same columns; and headless Chromium opens the page from disk and shows every image.
"""

from __future__ import annotations

import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest
import yaml
from scipy import stats

from metaland import claims_file, cross_study
from metaland.claims import claims_of
from metaland.io import file_digest, tree_digest
from metaland.report import Grid, Image, Text, to_html, to_markdown
from tests.pipeline import headless_chromium, screenshot

REPO = Path(__file__).resolve().parents[1]
LOCAL_LINK = re.compile(r"\]\(([^)\s]+)\)")


class Resources(HTMLParser):
    """Every src / href of a page, and the text of each table row."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value for name, value in attrs if name in ("src", "href") and value]


def rows_naming(page: str, claim_id: str, *, row_split: str) -> list[str]:
    return [row for row in page.split(row_split) if claim_id in row]


# --------------------------------------------------------------------------------------------
# Without the DAG: the renderers and the schema
# --------------------------------------------------------------------------------------------


def test_both_renderings_carry_the_same_cells_and_colour_the_verdict():
    grid = Grid(("verdict", "claim"), (("fails", "a `code` | b"), ("holds", "[link `x`](../results/x.csv)")))
    page, markdown = to_html(grid), to_markdown(grid)
    assert "<b class='verdict fails' style='color:#cf222e'>fails</b>" in page
    assert "a <code>code</code> | b" in page and "<a href='../results/x.csv'>link <code>x</code></a>" in page
    assert markdown.splitlines() == [
        "| verdict | claim |",
        "|---|---|",
        "| 🔴 **fails** | a `code` \\| b |",
        "| 🟢 **holds** | [link `x`](../results/x.csv) |",
    ]
    assert to_html(Text("<script>", small=True)) == "<p class='note'>&lt;script&gt;</p>"
    figure = Image("../figures/s/f.png", "cap", ("Rebuild this: `dvc repro plot`",))
    assert "<img src='../figures/s/f.png' alt='cap'>" in to_html(figure)
    assert to_markdown(figure).startswith("![cap](../figures/s/f.png)")


def test_the_schema_rejects_a_record_that_does_not_match():
    part = {
        "component": "",
        "stratum": "dataset=d",
        "name": "Spearman ρ(step, value) per run",
        "estimate": 0.5,
        "ci": [0.1, 0.9],
        "n_seeds": 3,
        "sd_between_seeds": 0.2,
        "p_holds": 0.01,
        "p_fails": 0.99,
        "per_seed": {"0": 0.4, "1": 0.5, "2": 0.6},
        "note": "",
    }
    statistic = {"name": "s", "value": 0.5, "n": 3, "ci": [0.1, 0.9], "p_value": 0.02, "p_adjusted": 0.02}
    statistic |= {"p_holds": 0.01, "p_fails": 0.99, "parts": [part]}
    claim = {
        "id": "s-x",
        "study": "s",
        "seed": "000",
        "section": "§1",
        "claim": "c",
        "category": "finding",
        "rule": "r",
        "method": {"": {"family": "trend", "params": {"direction": 1}}},
        "aggregate": {"confidence": 0.95, "alpha": 0.05, "min_seeds": 3},
        "statistic": statistic,
        "verdict": "holds",
        "reason": "why",
        "power": {},
        "rows": {"path": "claims/s/x.csv", "sha256": "0" * 64, "n_rows": 3, "runs": ["r0"], "seeds": [0],
                 "strata": ["dataset=d"]},
        "inputs": {"runs": [{"run": "r0", "checkpoints": "checkpoints/r0", "steps": [0, 5]}]},
        "profile": "ci",
        "mlflow": {"experiment": "metaland/s", "probe_runs": {"r0": None}},
    }  # fmt: skip
    none = {"holds": 0, "fails": 0, "inconclusive": 0}
    record = {"profile": "ci", "counts": {**none, "holds": 1}, "checks": none, "by_study": {}, "claims": [claim]}
    assert claims_file.validate(record).claims[0].mlflow.probe_runs == {"r0": None}
    for broken in (
        {**claim, "verdict": "maybe"},
        {**claim, "profile": None},
        {**claim, "extra": 1},
        {**claim, "category": "finding?"},
        {**claim, "rows": {**claim["rows"], "sha256": None}},
    ):
        with pytest.raises(pydantic.ValidationError):
            claims_file.validate({**record, "claims": [broken]})
    required = set(claims_file.json_schema()["$defs"]["ClaimRecord"]["required"])
    assert required >= {"verdict", "inputs", "mlflow", "rows", "category", "method", "power"}


# --------------------------------------------------------------------------------------------
# On the ci build
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(ci_pipeline):
    """(checkout, claims record, index.html, index.md) of the shared ci build."""
    work, _, _ = ci_pipeline
    record = json.loads((work / "results" / "claims.json").read_text())
    return work, record, (work / "report" / "index.html").read_text(), (work / "report" / "index.md").read_text()


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_every_claim_appears_with_its_verdict(report):
    work, record, page, markdown = report
    claims_file.validate(record)
    studies = sorted(
        {run["study"] for run in yaml.safe_load((REPO / "profiles" / "ci.yaml").read_text())["runs"].values()}
    )
    assert len(studies) == 5
    assert sorted(c["id"] for c in record["claims"]) == sorted(c.id for s in studies for c in claims_of(s))
    for category, counts in (("finding", record["counts"]), ("check", record["checks"])):
        assert counts == {
            v: sum(c["verdict"] == v for c in record["claims"] if c["category"] == category)
            for v in claims_file.VERDICTS
        }
    counts = record["counts"]
    findings = sum(c["category"] == "finding" for c in record["claims"])
    summary = f"{findings} findings: {counts['holds']} hold, {counts['fails']} fail"
    assert summary in page and summary in markdown
    assert "Sanity checks (not findings of the seed)" in page
    for claim in record["claims"]:
        (row,) = rows_naming(page, f"<code>{claim['id']}</code>", row_split="<tr>")
        assert f"class='verdict {claim['verdict']}'" in row
        (line,) = rows_naming(markdown, f"`{claim['id']}`", row_split="\n")
        assert f"**{claim['verdict']}**" in line
        assert claim["profile"] == record["profile"] == "ci"
        probed = pd.read_csv(work / "results" / claim["study"] / "checkpoints.csv")
        assert {r["run"]: r["steps"] for r in claim["inputs"]["runs"]} == {
            run: sorted(rows["step"]) for run, rows in probed.groupby("run")
        }
        rows = work / "results" / claim["rows"]["path"]
        assert file_digest(rows) == claim["rows"]["sha256"] and claim["rows"]["path"] in page


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_every_verdict_is_recomputed_from_its_rows_file_alone(report, tmp_path):
    """`metaland claim <id>` on a copy of results/ with nothing but claims.json and the rows files."""
    import shutil

    from metaland.explain import explain_claim

    work, record, _, _ = report
    alone = tmp_path / "results"
    (alone / "claims").parent.mkdir(parents=True)
    shutil.copytree(work / "results" / "claims", alone / "claims")
    shutil.copy(work / "results" / "claims.json", alone / "claims.json")
    for claim in record["claims"]:
        lines, matches = explain_claim(alone, claim["id"])
        assert matches, "\n".join(lines)
        assert lines[-1].startswith(f"recorded in results/claims.json: {claim['verdict']}")


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_claims_name_the_mlflow_runs_that_wrote_their_inputs(report):
    from mlflow import MlflowClient

    work, record, page, _ = report
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    for claim in record["claims"]:
        for run, run_id in claim["mlflow"]["probe_runs"].items():
            tags = client.get_run(run_id).data.tags
            assert (tags["metaland.stage"], tags["metaland.run_key"]) == ("probe", run)
            assert tags["metaland.outputs_sha256"] == tree_digest(work / "probes" / run)
            assert (
                client.get_experiment(client.get_run(run_id).info.experiment_id).name == claim["mlflow"]["experiment"]
            )
            assert f"<code>{run_id}</code>" in page
    aggregate = client.search_runs(
        [client.get_experiment_by_name("metaland/results").experiment_id], "tags.`metaland.stage` = 'aggregate'"
    )
    logged = {a.path for run in aggregate for a in client.list_artifacts(run.info.run_id, "report")}
    assert logged == {"report/index.html", "report/index.md"}


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_the_report_opens_offline_and_every_link_resolves(report):
    work, record, page, markdown = report
    parser = Resources()
    parser.feed(page)
    links = {"html": parser.urls, "markdown": LOCAL_LINK.findall(markdown)}
    images = [u for u in parser.urls if u.endswith(".png")]
    assert len(images) == len(set(images)) >= 1 + len({c["study"] for c in record["claims"]})
    for kind, urls in links.items():
        assert urls, f"no links in the {kind} report"
        for url in urls:
            assert not re.match(r"^([a-z]+:)?//", url), f"{kind} report loads {url} from the network"
            assert (work / "report" / url).resolve().is_file(), f"{kind} report links to missing {url}"
    assert sorted(images) == sorted(u for u in links["markdown"] if u.endswith(".png"))
    assert not re.search(r"url\(|@import|<script|<link", page)


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_cross_study_correlations_equal_scipys(report):
    """One point per run (its last probed checkpoint), ρ equal to scipy's, and the exact permutation p equal
    to an explicit enumeration of every ordering where there are at most 7 runs."""
    import itertools

    work, record, page, _ = report
    table = pd.read_csv(work / "results" / "cross_study.csv")
    studies = sorted({c["study"] for c in record["claims"]})
    frames = {s: pd.read_csv(work / "results" / s / "checkpoints.csv").assign(study=s) for s in studies}
    frames = {s: f[f["step"] == f.groupby("run")["step"].transform("max")] for s, f in frames.items()}
    points = pd.concat(frames.values(), ignore_index=True)
    measured = {
        s: set(cross_study.landscape_columns(f.dropna(axis="columns", how="all").columns)) for s, f in frames.items()
    }
    assert set(table["scope"]) == {"all", *(s for s, metrics in measured.items() if metrics)}
    for scope, metrics in [("all", set().union(*measured.values())), *measured.items()]:
        assert set(table.loc[table["scope"] == scope, "metric"]) == metrics
    assert {"hessian_spectral_norm", "sam_sharpness", "pc", "gradient_coherence"} <= set().union(*measured.values())
    for row in table.itertuples():
        frame = points if row.scope == "all" else frames[row.scope]
        frame = frame[frame["study"].isin([s for s, metrics in measured.items() if row.metric in metrics])]
        x, y = frame[row.metric].to_numpy(float), frame["query_accuracy"].to_numpy(float)
        both = np.isfinite(x) & np.isfinite(y)
        assert (row.n, row.n_missing, row.n_runs) == (both.sum(), len(frame) - both.sum(), both.sum())
        if both.sum() >= 3 and np.ptp(x[both]) > 0 and np.ptp(y[both]) > 0:
            rho = stats.spearmanr(x[both], y[both]).statistic
            assert row.spearman_rho == pytest.approx(rho, abs=1e-12)
            if both.sum() <= 7:
                rx, ry = stats.rankdata(x[both]), stats.rankdata(y[both])
                null = np.array([stats.pearsonr(rx, np.array(order)).statistic for order in itertools.permutations(ry)])
                exact = min(1.0, 2 * min(np.mean(null <= rho + 1e-12), np.mean(null >= rho - 1e-12)))
                assert row.spearman_p == pytest.approx(exact, abs=1e-9)
        else:
            assert math.isnan(row.spearman_rho)
        assert f"<code>{row.metric}</code>" in page
    assert (work / "figures" / "cross_study" / "metrics_vs_accuracy.png").stat().st_size > 10_000


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_headless_chromium_opens_the_report_from_disk(report, tmp_path: Path):
    work, record, _, _ = report
    with headless_chromium() as browser:
        browser.get((work / "report" / "index.html").as_uri())
        assert browser.title == "metaland — reproduction report"
        broken = browser.execute_script(
            "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);"
        )
        assert broken == [], f"images that did not load: {broken}"
        verdicts = browser.find_elements("css selector", "b.verdict")
        assert sorted(v.text for v in verdicts) == sorted(c["verdict"] for c in record["claims"])
        screenshot(browser, tmp_path / "report.png")
