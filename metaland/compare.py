"""Compare two builds' results within a tolerance (``python -m metaland compare-results A B``).

"Same params, same machine, same bytes" is what metaland promises; two machines (another CPU
model, a GPU) compute in a different floating-point order and so write different bytes, and
``dvc.lock`` hashes differ with them. This module says whether two builds agree *in numbers*:
tables (CSV) cell by cell, JSON value by value, safetensors tensor by tensor, numbers equal
within ``|a - b| <= atol + rtol * |b|`` (NumPy's ``isclose``, NaN equal to NaN), everything else
(text cells, verdict strings, keys, shapes) exactly. Rendered files (figures, report pages) are
listed as ignored: their numbers are those of the tables they are drawn from.

Pure functions over paths; :func:`compare_trees` walks two folders (or compares two files).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RENDERED = frozenset({".png", ".svg", ".pdf", ".jpg", ".jpeg", ".html", ".md"})
"""Suffixes of rendered outputs, not compared."""

SHOWN_MISMATCHES = 5


@dataclass(frozen=True)
class Tolerance:
    """Numbers agree within ``atol + rtol·|b|``; JSON keys in ``ignore_keys`` (e.g. ``mlflow``: run ids are
    provenance of one tracking store, different in every build) are not compared."""

    rtol: float = 1e-5
    atol: float = 1e-8
    ignore_keys: frozenset[str] = frozenset()


@dataclass
class FileComparison:
    """One file's verdict: ``equal`` (same bytes), ``close`` (numbers within tolerance), ``differs``,
    ``only-a`` / ``only-b`` (present on one side), or ``ignored`` (rendered)."""

    path: str
    status: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    compared: int = 0
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0

    @property
    def agrees(self) -> bool:
        return self.status in {"equal", "close", "ignored"}


class _Diff:
    """Accumulates value comparisons of one file."""

    def __init__(self, tolerance: Tolerance) -> None:
        self.tolerance = tolerance
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.compared = 0
        self.mismatches: list[str] = []
        self.count = 0

    def structural(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.mismatches) < SHOWN_MISMATCHES:
            self.mismatches.append(f"{where}: {message}")

    def numbers(self, where: str, a: np.ndarray, b: np.ndarray, labels: list[str] | None = None) -> None:
        """Compare two equally shaped float arrays elementwise (``labels[i]`` names element i)."""
        a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
        self.compared += a.size
        both_finite = np.isfinite(a) & np.isfinite(b)
        if both_finite.any():
            gap = np.abs(a[both_finite] - b[both_finite])
            self.max_abs = max(self.max_abs, float(gap.max()))
            scale = np.abs(b[both_finite])
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(scale > 0, gap / scale, np.where(gap > 0, np.inf, 0.0))
            self.max_rel = max(self.max_rel, float(rel.max()))
        bad = ~np.isclose(a, b, rtol=self.tolerance.rtol, atol=self.tolerance.atol, equal_nan=True)
        for i in np.flatnonzero(bad):
            self.structural(f"{where}{labels[i] if labels else f'[{i}]'}", f"{float(a[i])!r} vs {float(b[i])!r}")

    def values(self, where: str, a, b) -> None:
        """Compare two non-numeric values exactly."""
        self.compared += 1
        if a != b:
            self.structural(where, f"{a!r} vs {b!r}")

    def result(self, path: str) -> FileComparison:
        status = "differs" if self.count else "close"
        return FileComparison(path, status, self.max_abs, self.max_rel, self.compared, self.mismatches, self.count)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compare_json(diff: _Diff, where: str, a, b) -> None:
    if _is_number(a) and _is_number(b):
        diff.numbers(where, np.array([a]), np.array([b]), [""])
    elif isinstance(a, dict) and isinstance(b, dict):
        for key in sorted((a.keys() | b.keys()) - diff.tolerance.ignore_keys):
            if key not in a or key not in b:
                diff.structural(f"{where}.{key}", f"only in {'A' if key in a else 'B'}")
            else:
                _compare_json(diff, f"{where}.{key}", a[key], b[key])
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diff.structural(where, f"{len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _compare_json(diff, f"{where}[{i}]", x, y)
    else:
        diff.values(where, a, b)


def _compare_csv(diff: _Diff, a: Path, b: Path) -> None:
    import pandas as pd

    left, right = pd.read_csv(a, keep_default_na=True), pd.read_csv(b, keep_default_na=True)
    if list(left.columns) != list(right.columns):
        only_a, only_b = set(left.columns) - set(right.columns), set(right.columns) - set(left.columns)
        diff.structural("columns", f"only in A {sorted(only_a)}, only in B {sorted(only_b)} (or another order)")
        return
    if len(left) != len(right):
        diff.structural("rows", f"{len(left)} vs {len(right)}")
        return
    for column in left.columns:
        x, y = left[column], right[column]
        numeric = pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y)
        if numeric and not (pd.api.types.is_bool_dtype(x) or pd.api.types.is_bool_dtype(y)):
            labels = [f"[row {i + 2}, {column}]" for i in range(len(x))]  # row numbers as in an editor
            diff.numbers("", x.to_numpy(dtype=np.float64), y.to_numpy(dtype=np.float64), labels)
        else:
            for i, (u, v) in enumerate(zip(_texts(x), _texts(y), strict=True)):
                diff.values(f"[row {i + 2}, {column}]", u, v)


def _texts(column) -> list[str]:
    """A non-numeric column's cells as text, a missing cell as "" (pandas' string dtype keeps it NaN)."""
    import pandas as pd

    return ["" if pd.isna(value) else str(value) for value in column]


def _compare_safetensors(diff: _Diff, a: Path, b: Path) -> None:
    from safetensors.numpy import load_file

    left, right = load_file(a), load_file(b)
    for name in sorted(left.keys() | right.keys()):
        if name not in left or name not in right:
            diff.structural(name, f"only in {'A' if name in left else 'B'}")
        elif left[name].shape != right[name].shape or left[name].dtype != right[name].dtype:
            diff.structural(name, f"{left[name].dtype}{left[name].shape} vs {right[name].dtype}{right[name].shape}")
        else:
            diff.numbers(name, left[name], right[name])


def compare_files(a: Path, b: Path, name: str, tolerance: Tolerance) -> FileComparison:
    """Compare one file present in both builds."""
    if a.suffix.lower() in RENDERED:
        return FileComparison(name, "ignored")
    if a.read_bytes() == b.read_bytes():
        return FileComparison(name, "equal")
    diff = _Diff(tolerance)
    suffix = a.suffix.lower()
    try:
        if suffix == ".csv":
            _compare_csv(diff, a, b)
        elif suffix == ".json":
            _compare_json(diff, "", json.loads(a.read_text()), json.loads(b.read_text()))
        elif suffix == ".safetensors":
            _compare_safetensors(diff, a, b)
        else:
            diff.structural("", "bytes differ (not a table, JSON or safetensors file: compared exactly)")
    except (ValueError, UnicodeDecodeError) as error:  # unparsable on one side: report, never crash
        diff.structural("", f"cannot be read as {suffix}: {error}")
    return diff.result(name)


def _files(root: Path) -> Iterator[str]:
    if root.is_file():
        yield root.name
        return
    for path in sorted(root.rglob("*")):
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts):
            yield path.relative_to(root).as_posix()


def compare_trees(a: Path, b: Path, tolerance: Tolerance = Tolerance()) -> list[FileComparison]:
    """Every file of two folders (matched by relative path), or two files, compared."""
    if a.is_file() and b.is_file():
        return [compare_files(a, b, a.name, tolerance)]
    in_a, in_b = set(_files(a)), set(_files(b))
    out = []
    for name in sorted(in_a | in_b):
        if name not in in_b:
            out.append(FileComparison(name, "only-a"))
        elif name not in in_a:
            out.append(FileComparison(name, "only-b"))
        else:
            out.append(compare_files(a / name, b / name, name, tolerance))
    return out


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def format_comparison(results: list[FileComparison], tolerance: Tolerance) -> str:
    """A report a person reads: one line per file that is not byte-equal, then a summary."""
    lines = []
    for r in results:
        if r.status in {"equal", "ignored"}:
            continue
        if r.status in {"only-a", "only-b"}:
            lines.append(f"{r.status:8} {r.path}")
            continue
        lines.append(
            f"{r.status:8} {r.path}: {r.compared} values, max |a-b| {_number(r.max_abs)}, "
            f"max rel {_number(r.max_rel)}" + (f", {r.mismatch_count} outside tolerance" if r.mismatch_count else "")
        )
        lines += [f"           {m}" for m in r.mismatches]
        if r.mismatch_count > len(r.mismatches):
            lines.append(f"           ... and {r.mismatch_count - len(r.mismatches)} more")
    counts = {s: sum(r.status == s for r in results) for s in ("equal", "close", "differs", "only-a", "only-b")}
    ignored = sum(r.status == "ignored" for r in results)
    verdict = "AGREE" if all(r.agrees for r in results) else "DIFFER"
    ignored_keys = f" (JSON keys ignored: {', '.join(sorted(tolerance.ignore_keys))})" if tolerance.ignore_keys else ""
    lines.append(
        f"{verdict} within rtol={tolerance.rtol:g}, atol={tolerance.atol:g}{ignored_keys}: {counts['equal']} files "
        "byte-equal, "
        f"{counts['close']} equal within tolerance, {counts['differs']} differ, {counts['only-a']} only in A, "
        f"{counts['only-b']} only in B; {ignored} rendered files (figures, report pages) not compared"
    )
    return "\n".join(lines)
