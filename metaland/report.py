"""Plot stage: every study's figures, then the one report page a person reads first.

``figures/<study>/<figure>.png`` and ``report/index.html``: the claims with their verdicts and
statistics, the figures, and provenance (git commit, profile, params hash, how to rerun).
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from metaland.config import Config
from metaland.io import atomic_dir, file_digest, read_json, write_text
from metaland.results import load_tables
from metaland.studies import STUDIES
from metaland.tracking import git_state

VERDICT_COLORS = {"holds": "#1a7f37", "fails": "#cf222e", "inconclusive": "#9a6700"}


def plot_all(config: Config, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw every figure of every study that has runs; the folder appears complete."""
    written = []
    with atomic_dir(figures_dir) as out:
        for name in config.studies_with_runs():
            tables = load_tables(results_dir, name)
            for figure in STUDIES.get(name).figures:
                path = out / name / f"{figure.name}.png"
                figure.draw(tables, path)
                written.append(Path(figures_dir) / name / path.name)
    return written


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _claim_row(claim: dict) -> str:
    stat = claim["statistic"]
    ci = f" [{_fmt(stat['ci'][0])}, {_fmt(stat['ci'][1])}]" if stat.get("ci") else ""
    p = f", p ≤ {_fmt(stat['p_value'])}" if stat.get("p_value") is not None else ""
    color = VERDICT_COLORS[claim["verdict"]]
    return (
        f"<tr><td><b style='color:{color}'>{claim['verdict']}</b></td>"
        f"<td>{html.escape(claim['section'])}</td><td>{html.escape(claim['claim'])}"
        f"<div class='rule'>Rule: {html.escape(claim['rule'])}</div>"
        f"<div class='rule'>Here: {html.escape(claim['reason'])}.</div></td>"
        f"<td>{html.escape(stat['name'])} = {_fmt(stat['value'])}{ci}{p} (n = {stat['n']})</td></tr>"
    )


def _study_table(path: Path, caption: str) -> str:
    """A study's own table (results/<study>/<table>.csv) as HTML, numbers to 4 significant digits."""
    frame = pd.read_csv(path)
    body = frame.to_html(index=False, na_rep="—", float_format=lambda v: f"{v:.4g}", border=0)
    return f"<h3>{html.escape(caption)}</h3>{body}"


def write_report(config: Config, params_path: Path, results_dir: Path, figures_dir: Path, report_dir: Path) -> Path:
    record = read_json(Path(results_dir) / "claims.json")
    git = git_state()
    sections = []
    for name in config.studies_with_runs():
        spec = STUDIES.get(name)
        claims = [c for c in record["claims"] if c["study"] == name]
        figures = "".join(
            f"<figure><img src='../{figures_dir.name}/{name}/{f.name}.png' alt='{html.escape(f.caption)}'>"
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>"
            for f in spec.figures
        )
        tables = "".join(_study_table(Path(results_dir) / name / f"{t.name}.csv", t.caption) for t in spec.tables)
        runs = ", ".join(run.key for run in config.runs_of(name))
        sections.append(
            f"<h2>{html.escape(spec.title)} <small>(seed {spec.seed})</small></h2>"
            f"<p class='rule'>Runs: {html.escape(runs)}</p>"
            "<table><tr><th>verdict</th><th>where</th><th>claim</th><th>statistic</th></tr>"
            + "".join(_claim_row(c) for c in claims)
            + f"</table>{tables}{figures}"
        )
    counts = record["counts"]
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>metaland — reproduction report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #1f2328; }}
table {{ border-collapse: collapse; width: 100%; margin: 1em 0; }}
td, th {{ border-bottom: 1px solid #d0d7de; padding: .5em; vertical-align: top; text-align: left; }}
.rule {{ color: #59636e; font-size: .9em; margin-top: .3em; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #59636e; }}
code {{ background: #f6f8fa; padding: .1em .3em; }}
</style></head><body>
<h1>metaland — reproduction report</h1>
<p>Profile <b>{html.escape(config.profile)}</b>: {counts["holds"]} claims hold, {counts["fails"]} fail,
{counts["inconclusive"]} are inconclusive at this scale. Verdicts follow rules fixed in code before the data
(<code>metaland/claims.py</code> and each study module).</p>
<p class="rule">Provenance: git commit <code>{html.escape(git["commit"])}</code> (dirty: {git["dirty"]}),
params.yaml sha256 <code>{file_digest(params_path)[:16]}</code>. Rebuild with <code>make repro</code>;
browse every run with <code>make ui</code>.</p>
{"".join(sections)}
</body></html>
"""
    with atomic_dir(report_dir) as out:
        write_text(out / "index.html", page)
    return Path(report_dir) / "index.html"
