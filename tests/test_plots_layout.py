"""Figure text a reader could misread: the layout check of metaland.plots.save, against figures
built to fail it, and the wrapping that fixes long panel titles."""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import pytest

from metaland import plots

LONG = "(a) meta-train accuracy, omniglot-small-alphabets 20-way 1-shot, every checkpoint"


def problems(fig) -> list[str]:
    fig.tight_layout()
    fig.draw_without_rendering()
    found = plots.layout_problems(fig, fig.canvas.get_renderer())
    plt.close(fig)
    return found


def two_panels():
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_title(LONG)
    return fig


def test_long_titles_of_neighbouring_panels_are_found_to_overlap():
    assert any(p.startswith("overlap: panel 0 title") and "panel 1 title" in p for p in problems(two_panels()))


@pytest.mark.filterwarnings("ignore:Tight layout not applied")
def test_text_off_the_figure_is_found():
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.annotate("far away", (0.5, 0.5), xytext=(900, 0), textcoords="offset points")
    assert problems(fig) == ["off the figure: panel 0 annotation 'far away'"]


def test_wrapping_fits_the_titles_to_their_panels():
    fig = two_panels()
    plots.wrap_panel_text(fig)
    assert "\n" in fig.axes[0].get_title()
    assert problems(fig) == []


def test_save_warns_about_what_still_overlaps(tmp_path, caplog):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.text(0.5, 0.5, "one label")
    ax.text(0.5, 0.5, "another label")
    with caplog.at_level(logging.WARNING, logger="metaland.plots"):
        plots.save(fig, tmp_path / "study" / "figure.png")
    assert (tmp_path / "study" / "figure.png").stat().st_size > 0
    assert [r.getMessage() for r in caplog.records] == [
        "study/figure.png: overlap: panel 0 annotation 'one label' and panel 0 annotation 'another label'"
    ]
