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


@dataclass(frozen=True)
class Table:
    name: str  # file stem under results/<study>/
    caption: str
    build: Callable[[StudyTables, AggregateConfig], pd.DataFrame]


@dataclass(frozen=True)
class StudySpec:
    name: str
    seed: str
    title: str
    figures: tuple[Figure, ...]
    tables: tuple[Table, ...] = ()  # study-specific tables aggregate writes and the report shows


STUDIES: Registry[StudySpec] = Registry("study", package=__name__)
