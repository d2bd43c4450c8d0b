"""Study registry: one module per seed's study — its claims, figures and documentation.

A study module registers a :class:`StudySpec` (what ``plot`` draws and the report shows) and its
claims (``metaland.claims.register``); its runs and knobs live in ``params.yaml`` under
``studies.<name>`` and ``runs``. The module is named as its study and is imported on the study's
first lookup, so validating params (every stage) does not import plotting and statistics.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metaland.registry import Registry

if TYPE_CHECKING:
    import pandas as pd

    from metaland.config import AggregateConfig
    from metaland.results import StudyTables


@dataclass(frozen=True)
class Figure:
    name: str  # file stem under figures/<study>/
    caption: str
    draw: Callable[[StudyTables, Path], None]


NOT_RUN = "not run at this scale"
"""The ``status`` of a published cell that no run of the profile measured (the table shows it all the same)."""


@dataclass(frozen=True)
class Table:
    """A study table: ``build`` makes our rows; ``published`` (optional) gives the seed's table as rows of its
    ``match`` columns and ``paper_*`` columns, so that the written table shows every published cell: matched by
    one of ours (``status`` run) or not run at this scale."""

    name: str  # file stem under results/<study>/
    caption: str
    build: Callable[[StudyTables, AggregateConfig], pd.DataFrame]
    published: Callable[[], pd.DataFrame] | None = None
    match: tuple[str, ...] = ()

    def frame(self, tables: StudyTables, cfg: AggregateConfig) -> pd.DataFrame:
        """What aggregate writes: our rows, then the published cells none of them matches (ours empty there)."""
        import pandas as pd

        ours = self.build(tables, cfg)
        if self.published is None:
            return ours
        published = self.published()
        ran = {tuple(map(str, row)) for row in ours[list(self.match)].to_numpy()} if not ours.empty else set()
        missing = [tuple(map(str, row)) not in ran for row in published[list(self.match)].to_numpy()]
        columns = [*dict.fromkeys([*ours.columns, *published.columns]), "status"]
        parts = [
            frame for frame in (ours.assign(status="run"), published[missing].assign(status=NOT_RUN)) if len(frame)
        ]
        return pd.concat(parts, ignore_index=True).reindex(columns=columns) if parts else pd.DataFrame(columns=columns)


@dataclass(frozen=True)
class StudySpec:
    name: str
    seed: str
    title: str
    figures: tuple[Figure, ...]
    tables: tuple[Table, ...] = ()  # study-specific tables aggregate writes and the report shows


STUDIES: Registry[StudySpec] = Registry("study", package=__name__)
