"""Study registry: one module per seed's study — its claims, figures and documentation.

A study module registers a :class:`StudySpec` (what ``plot`` draws and the report shows) and its
claims (``metaland.claims.register``); its runs and knobs live in ``params.yaml`` under
``studies.<name>`` and ``runs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from metaland.config import AggregateConfig
from metaland.registry import Registry
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


STUDIES: Registry[StudySpec] = Registry("study")

# Registrations (one module per study).
from metaland.studies import ding2023 as _ding2023  # noqa: E402,F401
from metaland.studies import guiroy2019 as _guiroy2019  # noqa: E402,F401
from metaland.studies import lil2022 as _lil2022  # noqa: E402,F401
from metaland.studies import metaopt as _metaopt  # noqa: E402,F401
from metaland.studies import sharpmaml as _sharpmaml  # noqa: E402,F401
