"""Figure helpers shared by the studies: curves over meta-training with confidence bands.

Figures are PNGs with fixed metadata (no software version, no timestamp), so a rerun on the same
inputs gives the same bytes. Each study module composes these helpers into its figures.
"""

from __future__ import annotations

import io
import itertools
import logging
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from metaland.io import write_bytes
from metaland.results import STRATUM_KNOBS, stratum_of
from metaland.stats import mean_ci

log = logging.getLogger(__name__)

ALGORITHM_COLORS = {
    "maml": "#1f77b4",
    "fomaml": "#d62728",
    "finetune": "#2ca02c",
    "regmaml": "#9467bd",
    "sharpmaml-low": "#ff7f0e",
    "sharpmaml-up": "#8c564b",
    "sharpmaml-both": "#e377c2",
    "maml+lil": "#ff7f0e",
    "maml+lil-phase": "#bcbd22",
    "maml+lil-amplitude": "#17becf",
    "anil": "#7f7f7f",
    "anil+lil-phase": "#c49c94",
    "boil": "#1a7f37",
    "boil+lil-phase": "#98df8a",
}
SHOT_STYLES = {1: "-", 5: "--"}
ACCURACY_COLOR = "#1f77b4"  # seed 000 Fig. 2.5: accuracy in blue
COHERENCE_COLOR = "#ff7f0e"  # ... and the coherence metric in orange
LABELS = {
    "query_accuracy": "meta-test target accuracy",
    "query_loss": "meta-test target loss",
    "support_loss": "support loss at θ̃ᵢ",
    "pre_query_accuracy": "target accuracy at θˢ (before adaptation)",
    "hessian_spectral_norm": "curvature E[‖H(Dᵢ; θ̃ᵢ)‖σ]",
    "trajectory_coherence": "trajectory coherence E[θ⃗ᵢᵀθ⃗ⱼ]",
    "gradient_coherence": "gradient coherence E[gᵢᵀgⱼ]",
    "trajectory_norm": "trajectory norm E[‖θ̃ᵢ − θˢ‖₂]",
    "batch_accuracy": "pre-training batch accuracy",
}

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.size": 9,
        "legend.fontsize": 8,
        "legend.frameon": False,
    }
)


def label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def grid(n_panels: int, *, columns: int = 3, width: float = 4.0, height: float = 3.0):
    columns = min(columns, n_panels)
    rows = -(-n_panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def _wrapped(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width (narrow one-panel figures included)."""
    fig.suptitle(_wrapped(text, max(40, int(fig.get_figwidth() * 13))))


CHAR_WIDTH_EM = 0.6
"""Width of an average character of the default font (DejaVu Sans), in ems: what wraps a label."""


def wrap_panel_text(fig) -> None:
    """Wrap every panel's title and x label to the panel's width, and its y label to its height, so
    that neither runs into the next panel nor off the figure."""
    for ax in fig.axes:
        box = ax.get_position()
        width, height = box.width * fig.get_figwidth(), box.height * fig.get_figheight()
        for text, inches in ((ax.title, width), (ax.xaxis.label, width), (ax.yaxis.label, height)):
            if text.get_text():
                chars = max(16, int(inches * 72 / (text.get_fontsize() * CHAR_WIDTH_EM)))
                text.set_text(_wrapped(text.get_text(), chars))


def text_boxes(fig, renderer) -> list[tuple[str, object]]:
    """(name, window extent) of the text a reader reads: figure title and legends, and per visible
    panel its titles, axis labels, legend and annotations (tick labels are matplotlib's to place)."""
    boxes = [("figure title", fig._suptitle)] if fig._suptitle is not None else []
    boxes += [("figure legend", legend) for legend in fig.legends]
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        named = [("title", ax.title), ("x label", ax.xaxis.label), ("y label", ax.yaxis.label)]
        named += [("legend", ax.get_legend())] + [("annotation", t) for t in ax.texts]
        boxes += [(f"panel {i} {kind}", artist) for kind, artist in named if artist is not None]
    shown = [
        (name, artist)
        for name, artist in boxes
        if artist.get_visible() and (not hasattr(artist, "get_text") or artist.get_text())
    ]
    return [
        (f"{name} {getattr(artist, 'get_text', str)()[:40]!r}", artist.get_window_extent(renderer))
        for name, artist in shown
    ]


def layout_problems(fig, renderer, slack: float = 2.0) -> list[str]:
    """Text that runs off the figure or into other text (by more than ``slack`` pixels both ways)."""
    width, height = fig.canvas.get_width_height()
    boxes = text_boxes(fig, renderer)
    problems = [
        f"off the figure: {name}"
        for name, box in boxes
        if box.x0 < -slack or box.y0 < -slack or box.x1 > width + slack or box.y1 > height + slack
    ]
    for (first, a), (second, b) in itertools.combinations(boxes, 2):
        if min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack:
            problems.append(f"overlap: {first} and {second}")
    return problems


def _figure_legend_height(fig) -> float:
    """The height, as a fraction of the figure, of its tallest figure legend (drawn at the bottom,
    ``loc="lower center"``): the panels are laid out above it."""
    if not fig.legends:
        return 0.0
    renderer = fig.canvas.get_renderer()
    return max(legend.get_window_extent(renderer).height for legend in fig.legends) / fig.bbox.height


def save(fig, path: Path | str) -> None:
    """Write a PNG with fixed metadata (byte-stable), atomically, and close the figure. Panel text is
    wrapped to fit, and the panels are laid out above any figure legend (a key shared by all
    panels goes there: ``fig.legend(..., loc="lower center")``); text that still overlaps or runs off
    the figure is logged as a warning."""
    buffer = io.BytesIO()
    wrap_panel_text(fig)
    fig.tight_layout(rect=(0.0, _figure_legend_height(fig), 1.0, 1.0))
    fig.draw_without_rendering()
    for problem in layout_problems(fig, fig.canvas.get_renderer()):
        log.warning("%s/%s: %s", Path(path).parent.name, Path(path).name, problem)
    fig.savefig(buffer, format="png", dpi=130, metadata={"Software": None})
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def curve(
    ax,
    rows: pd.DataFrame,
    metric: str,
    *,
    color: str,
    name: str,
    confidence: float = 0.95,
    linestyle: str = "-",
    linewidth: float = 1.4,
) -> None:
    """Mean of ``metric`` over runs at each step, with a CI band when there are several runs."""
    points = [(step, mean_ci(group[metric], confidence)) for step, group in rows.groupby("step", sort=True)]
    steps = [s for s, _ in points]
    ax.plot(
        steps,
        [c.mean for _, c in points],
        color=color,
        label=name,
        marker="o",
        markersize=2.5,
        linewidth=linewidth,
        linestyle=linestyle,
    )
    if any(c.n > 1 for _, c in points):
        ax.fill_between(
            steps, [c.low for _, c in points], [c.high for _, c in points], color=color, alpha=0.18, linewidth=0
        )


STRATUM_STYLES = ("-", "--", ":", "-.")
KNOB_LABELS = {
    "dataset": "{}",
    "backbone": "{}",
    "ways": "{}-way",
    "shots": "{}-shot",
    "queries": "{} queries",
    "inner_steps": "T = {}",
    "inner_lr": "α = {}",
    "augment": "aug {}",
}


def varying_knobs(rows: pd.DataFrame) -> list[str]:
    """The identity knobs (strata) that take more than one value in ``rows``."""
    return [k for k in STRATUM_KNOBS if k in rows and rows[k].nunique() > 1]


def curves_by_algorithm(
    ax,
    rows: pd.DataFrame,
    metric: str,
    *,
    title: str | None = None,
    by_shots: bool = False,
    key: str = "algorithm",
    names: dict[str, str] | None = None,
) -> None:
    """One mean curve (with a CI band over runs, i.e. seeds) per algorithm (or ``key``: variant) and
    stratum: runs of different settings (dataset, backbone, shots, inner steps, ...) are never averaged
    into one curve; the legend names the knobs that differ. ``by_shots`` draws 1-shot solid, 5-shot dashed;
    ``names`` maps a key to its legend name (default: upper case)."""
    shown = names or {}
    varying = varying_knobs(rows)
    strata = stratum_of(rows) if not rows.empty else pd.Series(dtype=str)
    for (name, stratum), group in rows.groupby([key, strata], sort=True) if not rows.empty else []:
        n_runs = group["run"].nunique()
        knobs = " ".join(KNOB_LABELS[k].format(group[k].iloc[0]) for k in varying)
        mine = sorted(set(strata[rows[key] == name]))  # this algorithm's strata: one line style each
        style = STRATUM_STYLES[mine.index(stratum) % len(STRATUM_STYLES)]
        if by_shots:
            style = SHOT_STYLES.get(group["shots"].iloc[0], ":")
        legend = " ".join(filter(None, [shown.get(name, name.upper()), knobs]))
        curve(
            ax,
            group,
            metric,
            color=ALGORITHM_COLORS.get(name, "#555555"),
            name=f"{legend} ({n_runs} run{'s' if n_runs > 1 else ''})",
            linestyle=style,
        )
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(label(metric))
    if title:
        ax.set_title(title)
    ax.legend()


def dual_axis(ax, rows: pd.DataFrame, left: str, right: str, *, title: str, per_run: bool = False) -> None:
    """Accuracy (left, blue) against a landscape metric (right, orange), as seed 000 Fig. 2.5.

    The mean over runs with CI bands, or (``per_run``) one thin line per run, as Fig. 2.7."""
    twin = ax.twinx()
    twin.grid(False)
    groups = [group for _, group in rows.groupby("run", sort=True)] if per_run else [rows]
    for group in groups:
        width = 1.0 if per_run else 1.4
        curve(ax, group, left, color=ACCURACY_COLOR, name=label(left), linewidth=width)
        curve(twin, group, right, color=COHERENCE_COLOR, name=label(right), linewidth=width)
    ax.set_ylabel(label(left), color=ACCURACY_COLOR)
    ax.set_xlabel("meta-iteration")
    twin.set_ylabel(label(right), color=COHERENCE_COLOR)
    twin.spines["right"].set_visible(True)
    ax.set_title(title)


def no_data(ax, title: str, what: str) -> None:
    """A panel whose runs this profile does not have: say so instead of drawing an empty frame."""
    ax.text(0.5, 0.5, f"no {what}\nin this profile\n(see the paper profile)", ha="center", va="center", color="#777777")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
