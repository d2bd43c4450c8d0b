"""Plot stage: every study's figures, then the report a person reads first.

``figures/<study>/<figure>.png``, ``figures/cross_study/metrics_vs_accuracy.png``, and the report:
``report/index.html`` and its Markdown twin ``report/index.md``, the same content in both (docs/report.md).
The report opens offline (no external resource; images and links are relative paths into the
repository) and shows, per study: the claims with coloured verdicts and their statistics, the runs
with their probed checkpoints and MLflow run ids, the study's tables (the seed's published numbers
beside ours where the seed gives them: the ``paper_*`` columns), its figures each with the command
that rebuilds it, and its parameters (``studies.<study>`` as YAML, with its hash); then the
cross-study view (:mod:`metaland.cross_study`); and the provenance of the whole (profile, git
commit, params.yaml digest).

The page is a short list of blocks (:class:`Heading`, :class:`Text`, :class:`Grid`,
:class:`Image`, :class:`Details`) rendered twice, to HTML and to Markdown, so the two cannot drift.
In text, `backticks` mark code.
"""

from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from metaland import cross_study
from metaland.claims_file import VERDICTS
from metaland.config import Config
from metaland.io import atomic_dir, file_digest, read_json, stable_hash, write_text
from metaland.results import load_tables
from metaland.studies import STUDIES
from metaland.tracking import git_state

VERDICT_COLORS = {"holds": "#1a7f37", "fails": "#cf222e", "inconclusive": "#9a6700"}
VERDICT_MARKS = {"holds": "🟢", "fails": "🔴", "inconclusive": "🟡"}
CROSS_STUDY = "cross_study"
CROSS_STUDY_FIGURE = "metrics_vs_accuracy"
REBUILD_FIGURE = "dvc repro plot"


def plot_all(config: Config, results_dir: Path, figures_dir: Path) -> list[Path]:
    """Draw every figure of every study that has runs, and the cross-study figure; the folder appears complete."""
    written = []
    checkpoints = {}
    with atomic_dir(figures_dir) as out:
        for name in config.studies_with_runs():
            tables = load_tables(results_dir, name)
            checkpoints[name] = tables.checkpoints
            for figure in STUDIES.get(name).figures:
                path = out / name / f"{figure.name}.png"
                figure.draw(tables, path)
                written.append(Path(figures_dir) / name / path.name)
        cross_study.draw(cross_study.pooled(checkpoints), out / CROSS_STUDY / f"{CROSS_STUDY_FIGURE}.png")
        written.append(Path(figures_dir) / CROSS_STUDY / f"{CROSS_STUDY_FIGURE}.png")
    return written


# --------------------------------------------------------------------------------------------
# Blocks, rendered to HTML and to Markdown
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class Text:
    text: str
    small: bool = False


@dataclass(frozen=True)
class Grid:
    """A table; cells of a column named ``verdict`` are coloured."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report folder
    caption: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Details:
    summary: str
    code: str


Block = Heading | Text | Grid | Image | Details


LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline_html(text: str) -> str:
    """Escape text; `backticked` parts become <code>, [label](href) a link (its label may hold code)."""
    out, last = [], 0
    for match in LINK.finditer(text):
        out += [_code_html(text[last : match.start()]), f"<a href='{html.escape(match[2])}'>{_code_html(match[1])}</a>"]
        last = match.end()
    return "".join([*out, _code_html(text[last:])])


def _code_html(text: str) -> str:
    parts = text.split("`")
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def _cell_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_html(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f" id='{html.escape(block.anchor)}'" if block.anchor else ""
        return f"<h{block.level}{anchor}>{_inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        return (
            f"<p class='note'>{_inline_html(block.text)}</p>" if block.small else f"<p>{_inline_html(block.text)}</p>"
        )
    if isinstance(block, Grid):
        head = "".join(f"<th>{_inline_html(c)}</th>" for c in block.columns)
        body = "".join(
            "<tr>"
            + "".join(_html_cell(column, cell) for column, cell in zip(block.columns, row, strict=True))
            + "</tr>"
            for row in block.rows
        )
        return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
    if isinstance(block, Image):
        notes = "".join(f"<div class='note'>{_inline_html(n)}</div>" for n in block.notes)
        return (
            f"<figure><img src='{html.escape(block.src)}' alt='{html.escape(block.caption)}'>"
            f"<figcaption>{_inline_html(block.caption)}{notes}</figcaption></figure>"
        )
    return f"<details><summary>{_inline_html(block.summary)}</summary><pre>{html.escape(block.code)}</pre></details>"


def _html_cell(column: str, cell: str) -> str:
    if column == "verdict" and cell in VERDICT_COLORS:
        return f"<td><b class='verdict {cell}' style='color:{VERDICT_COLORS[cell]}'>{cell}</b></td>"
    return f"<td>{_inline_html(cell)}</td>"


def to_markdown(block: Block) -> str:
    if isinstance(block, Heading):
        anchor = f'<a id="{block.anchor}"></a>\n' if block.anchor else ""
        return f"{anchor}{'#' * block.level} {block.text}"
    if isinstance(block, Text):
        return f"<sub>{block.text}</sub>" if block.small else block.text
    if isinstance(block, Grid):
        lines = ["| " + " | ".join(_cell_md(c) for c in block.columns) + " |", "|" + "---|" * len(block.columns)]
        for row in block.rows:
            cells = [
                f"{VERDICT_MARKS[cell]} **{cell}**" if column == "verdict" and cell in VERDICT_MARKS else _cell_md(cell)
                for column, cell in zip(block.columns, row, strict=True)
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    if isinstance(block, Image):
        return "\n\n".join([f"![{block.caption}]({block.src})", f"*{block.caption}*", *block.notes])
    return f"<details><summary>{_inline_html(block.summary)}</summary>\n\n```yaml\n{block.code}```\n\n</details>"


STYLE = """body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
body { color: #1f2328; }
table { border-collapse: collapse; width: 100%; margin: 1em 0; font-size: .92em; }
td, th { border-bottom: 1px solid #d0d7de; padding: .4em; vertical-align: top; text-align: left; }
.scroll { overflow-x: auto; } .note { color: #59636e; font-size: .9em; margin-top: .3em; }
figure { margin: 1.5em 0; } img { max-width: 100%; } figcaption { color: #59636e; }
code { background: #f6f8fa; padding: .1em .3em; } pre { background: #f6f8fa; padding: .8em; overflow-x: auto; }"""


def render_html(blocks: list[Block]) -> str:
    body = "\n".join(to_html(b) for b in blocks)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>metaland — reproduction report</title>\n<style>\n{STYLE}\n</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def render_markdown(blocks: list[Block]) -> str:
    return "\n\n".join(to_markdown(b) for b in blocks) + "\n"


# --------------------------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------------------------


def fmt(value) -> str:
    """A number to 4 significant digits; missing (None, NaN) as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def statistic_text(stat: dict) -> str:
    """The weakest part's statistic over seeds, the claim's p-value and its adjusted value."""
    ci = f" [{fmt(stat['ci'][0])}, {fmt(stat['ci'][1])}]" if stat.get("ci") else ""
    return (
        f"{stat['name']} = {fmt(stat['value'])}{ci} over {stat['n']} seeds; "
        f"p = {fmt(stat['p_value'])}, adjusted p = {fmt(stat['p_adjusted'])}"
    )


def power_text(power: dict) -> str:
    """What an inconclusive verdict would need."""
    if not power:
        return ""
    if "minimal_detectable_effect" not in power:
        return f" Power: {power.get('note', '')}."
    return (
        f" Power: with {power['seeds']} seeds (s.d. {fmt(power['sd_between_seeds'])} between seeds) the smallest "
        f"effect detected with probability 0.8 at level {fmt(power['level'])} (α / (2 × findings)) is "
        f"{fmt(power['minimal_detectable_effect'])}; "
        f"{fmt(power['seeds_needed'])} seeds would detect the {power['effect_source']} effect {fmt(power['effect'])}."
    )


def claims_grid(claims: list[dict]) -> Grid:
    rows = tuple(
        (c["verdict"], f"`{c['id']}`", c["section"], c["claim"], statistic_text(c["statistic"]),
         f"Rule: {c['rule']} Here: {c['reason']}.{power_text(c['power'])} Rows: "
         f"[`results/{c['rows']['path']}`](../results/{c['rows']['path']}); `python -m metaland claim {c['id']}`.")
        for c in claims
    )  # fmt: skip
    return Grid(("verdict", "claim id", "where", "claim", "statistic", "rule, reason, rows"), rows)


def frame_grid(frame: pd.DataFrame) -> Grid:
    rows = tuple(tuple(fmt(v) for v in row) for row in frame.astype(object).itertuples(index=False))
    return Grid(tuple(str(c) for c in frame.columns), rows)


def runs_grid(claims: list[dict]) -> Grid:
    """The study's runs: probed steps, the MLflow probe run that wrote their tables, the rebuild command."""
    first = claims[0]
    ids = first["mlflow"]["probe_runs"]
    rows = tuple(
        (f"`{r['run']}`", ", ".join(map(str, r["steps"])), f"`{ids[r['run']]}`" if ids.get(r["run"]) else "—",
         f"`dvc repro probe@{r['run']}`")
        for r in first["inputs"]["runs"]
    )  # fmt: skip
    return Grid(
        ("run", "probed checkpoint steps", f"MLflow probe run ({first['mlflow']['experiment']})", "rebuild"), rows
    )


def counts_text(claims: list[dict]) -> str:
    findings = [c for c in claims if c["category"] == "finding"]
    checks = [c for c in claims if c["category"] == "check"]
    counts = {v: sum(c["verdict"] == v for c in findings) for v in VERDICTS}
    text = (
        f"{len(findings)} findings: {counts['holds']} hold, {counts['fails']} fail, "
        f"{counts['inconclusive']} inconclusive"
    )
    if checks:
        passed = sum(c["verdict"] == "holds" for c in checks)
        text += f"; {len(checks)} sanity checks ({passed} pass), counted apart"
    return text


def _correlation_cell(row) -> str:
    missing = f"; {row.n_missing} missing" if row.n_missing else ""
    return f"ρ = {fmt(row.spearman_rho)} (p = {fmt(row.spearman_p)}, n = {row.n}{missing})"


def cross_study_blocks(results_dir: Path, figures_dir: Path) -> list[Block]:
    table = pd.read_csv(Path(results_dir) / "cross_study.csv")
    scopes = [cross_study.ALL, *sorted(s for s in table["scope"].unique() if s != cross_study.ALL)]
    rows = []
    for metric, group in table.groupby("metric", sort=False):
        by_scope = {row.scope: row for row in group.itertuples()}
        cells = [_correlation_cell(by_scope[scope]) if scope in by_scope else "not measured" for scope in scopes]
        rows.append((f"`{metric}`: {cross_study.describe(metric)}", *cells))
    return [
        Heading(2, "Cross-study view: landscape metrics against accuracy", "cross-study"),
        Text(
            "Spearman rank correlation of each landscape metric with `query_accuracy` (meta-test accuracy on each "
            "study's fixed probe tasks) across runs, one point per run (its last probed checkpoint: checkpoints of a "
            "run are not independent points), with the exact permutation p: pooled over all studies, then per "
            "study (read the per-study columns first: accuracies of different studies are on different tasks). "
            "n counts the runs with both values; missing ones are counted, not dropped silently. "
            "Table: [`results/cross_study.csv`](../results/cross_study.csv) (`dvc repro aggregate`)."
        ),
        Grid(("metric", *scopes), tuple(rows)),
        Image(
            f"../{figures_dir.name}/{CROSS_STUDY}/{CROSS_STUDY_FIGURE}.png",
            "Every landscape metric against meta-test accuracy; one colour per study.",
            (f"Rebuild this: `{REBUILD_FIGURE}` (draws it from `results/<study>/checkpoints.csv` of every study).",),
        ),
    ]


def study_blocks(name: str, claims: list[dict], params: dict, results_dir: Path, figures_dir: Path) -> list[Block]:
    spec = STUDIES.get(name)
    blocks: list[Block] = [
        Heading(2, f"{spec.title} (seed {spec.seed})", name),
        Text(f"Study `{name}`. {counts_text(claims)}."),
        claims_grid([c for c in claims if c["category"] == "finding"]),
    ]
    checks = [c for c in claims if c["category"] == "check"]
    if checks:
        blocks += [
            Heading(3, "Sanity checks (not findings of the seed)"),
            claims_grid(checks),
        ]
    blocks += [Heading(3, "Runs"), runs_grid(claims)]
    tables = [(t, pd.read_csv(Path(results_dir) / name / f"{t.name}.csv")) for t in spec.tables]
    if any(c.startswith("paper") for _, frame in tables for c in frame.columns):
        blocks.append(Text("The seed's published numbers stand beside ours in the `paper*` columns.", small=True))
    for table, frame in tables:
        blocks += [
            Heading(3, table.caption),
            frame_grid(frame),
            Text(f"[`results/{name}/{table.name}.csv`](../results/{name}/{table.name}.csv)", True),
        ]
    runs = ", ".join(f"`probe@{r['run']}`" for r in claims[0]["inputs"]["runs"])
    blocks.append(
        Text(
            f"Rebuild the figures below: `{REBUILD_FIGURE}` (draws them from `results/{name}/`, which "
            f"`dvc repro aggregate` builds from the probe tables of {runs}).",
            True,
        )
    )
    for figure in spec.figures:
        blocks.append(Image(f"../{figures_dir.name}/{name}/{figure.name}.png", figure.caption))
    block = yaml.safe_dump(params, sort_keys=False)
    blocks.append(Details(f"Parameters: `studies.{name}` in params.yaml (hash `{stable_hash(params)}`)", block))
    return blocks


def report_blocks(config: Config, params_path: Path, results_dir: Path, figures_dir: Path) -> list[Block]:
    record = read_json(Path(results_dir) / "claims.json")
    raw = yaml.safe_load(Path(params_path).read_text())
    git = git_state()
    names = config.studies_with_runs()
    by_study = {name: [c for c in record["claims"] if c["study"] == name] for name in names}

    def tally(cs: list[dict], category: str) -> list[str]:
        return [str(sum(c["verdict"] == v for c in cs if c["category"] == category)) for v in VERDICTS]

    summary = Grid(
        ("study", "seed", "findings", *VERDICTS, "sanity checks passed"),
        tuple(
            (f"`{n}`", STUDIES.get(n).seed, str(sum(c["category"] == "finding" for c in cs)), *tally(cs, "finding"),
             f"{tally(cs, 'check')[0]} of {sum(c['category'] == 'check' for c in cs)}")
            for n, cs in by_study.items()
        ),
    )  # fmt: skip
    blocks: list[Block] = [
        Heading(1, "metaland — reproduction report"),
        Text(
            f"Profile `{config.profile}`: {counts_text(record['claims'])} at this scale. Verdicts follow rules fixed "
            "in code before the data (`metaland/claims.py` and each study module): the training run (seed) is the "
            "unit of replication, strata (dataset, backbone, ways, shots, inner steps and lr, augmentation) are never "
            "mixed, and each study's findings are Holm-adjusted ([`docs/claims.md`](../docs/claims.md)). Every claim "
            "with its statistic, inputs and MLflow runs is in [`results/claims.json`](../results/claims.json), the "
            "rows behind it in `results/claims/`; `python -m metaland claim <id>` recomputes it step by step."
        ),
        summary,
        Text(
            f"Provenance: git commit `{git['commit']}` (dirty: {git['dirty']}), params.yaml sha256 "
            f"`{file_digest(params_path)[:16]}`. Rebuild everything with `dvc repro` (or `make repro`); "
            "browse every run with `make ui`.",
            small=True,
        ),
    ]
    for name in names:
        blocks += study_blocks(name, by_study[name], raw["studies"][name], results_dir, figures_dir)
    return blocks + cross_study_blocks(results_dir, figures_dir)


def write_report(
    config: Config, params_path: Path, results_dir: Path, figures_dir: Path, report_dir: Path
) -> list[Path]:
    """Write report/index.html and report/index.md (the folder appears complete); return their paths."""
    blocks = report_blocks(config, params_path, results_dir, figures_dir)
    with atomic_dir(report_dir) as out:
        write_text(out / "index.html", render_html(blocks))
        write_text(out / "index.md", render_markdown(blocks))
    return [Path(report_dir) / "index.html", Path(report_dir) / "index.md"]
