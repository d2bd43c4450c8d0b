"""`metaland compare-results`: two builds agree in numbers within a tolerance, never by bytes alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from metaland.compare import Tolerance, compare_trees
from tests.test_cli import run_cli


def write_build(root: Path, accuracy: float, verdict: str = "holds", loss: float = 0.5) -> Path:
    (root / "study").mkdir(parents=True)
    pd.DataFrame(
        {"run": ["a", "b"], "step": [0, 10], "query_accuracy": [accuracy, 0.25], "loss": [loss, float("nan")]}
    ).to_csv(root / "study" / "final.csv", index=False)
    (root / "claims.json").write_text(json.dumps({"claims": [{"id": "c1", "verdict": verdict, "p": 0.01}]}))
    (root / "figure.png").write_bytes(b"\x89PNG" + str(accuracy).encode())
    save_file({"w": torch.tensor([1.0, accuracy])}, str(root / "params.safetensors"))
    return root


def statuses(results) -> dict[str, str]:
    return {r.path: r.status for r in results}


def test_identical_builds_are_byte_equal_and_figures_are_ignored(tmp_path):
    a, b = write_build(tmp_path / "a", 0.75), write_build(tmp_path / "b", 0.75)
    shutil.copy(a / "figure.png", b / "figure.png")
    assert statuses(compare_trees(a, b)) == {
        "claims.json": "equal",
        "figure.png": "ignored",
        "params.safetensors": "equal",
        "study/final.csv": "equal",
    }


def test_rounding_differences_are_close_and_larger_ones_differ(tmp_path):
    a = write_build(tmp_path / "a", 0.75)
    close = write_build(tmp_path / "close", 0.75 * (1 + 1e-7))
    far = write_build(tmp_path / "far", 0.76)
    assert statuses(compare_trees(a, close)) == {
        "claims.json": "equal",
        "figure.png": "ignored",  # its bytes differ, and are not compared
        "params.safetensors": "close",
        "study/final.csv": "close",
    }
    results = {r.path: r for r in compare_trees(a, far, Tolerance(rtol=1e-3, atol=0))}
    table = results["study/final.csv"]
    assert table.status == "differs" and table.mismatch_count == 1
    assert table.mismatches == ["[row 2, query_accuracy]: 0.75 vs 0.76"]
    assert table.max_abs == pytest.approx(0.01) and table.max_rel == pytest.approx(0.01 / 0.76)
    assert results["params.safetensors"].status == "differs"
    assert all(r.status == "close" for r in compare_trees(a, far, Tolerance(rtol=0.02)) if r.path.endswith(".csv"))


def test_text_cells_verdicts_and_structure_are_compared_exactly(tmp_path):
    a = write_build(tmp_path / "a", 0.75)
    flipped = write_build(tmp_path / "flipped", 0.75, verdict="fails")
    claims = {r.path: r for r in compare_trees(a, flipped)}["claims.json"]
    assert claims.status == "differs" and claims.mismatches == [".claims[0].verdict: 'holds' vs 'fails'"]

    other = write_build(tmp_path / "other", 0.75)
    pd.read_csv(other / "study" / "final.csv").assign(extra=1).to_csv(other / "study" / "final.csv", index=False)
    (other / "claims.json").unlink()
    (other / "new.json").write_text("{}")
    results = statuses(compare_trees(a, other))
    assert results["study/final.csv"] == "differs"
    assert results["claims.json"] == "only-a" and results["new.json"] == "only-b"


def test_nan_equals_nan_but_not_a_number(tmp_path):
    a = write_build(tmp_path / "a", 0.75)
    b = write_build(tmp_path / "b", 0.75, loss=float("nan"))
    table = {r.path: r for r in compare_trees(a, b)}["study/final.csv"]
    assert table.status == "differs" and table.mismatches == ["[row 2, loss]: 0.5 vs nan"]


def test_a_missing_text_cell_equals_a_missing_one_but_not_text(tmp_path):
    """An empty cell of a text column (pandas reads it as missing) agrees with an empty cell, not with text."""
    a, b, c = (tmp_path / name for name in "abc")
    for folder, cells, acc in ((a, ["x", ""], "0.5"), (b, ["x", ""], "0.50"), (c, ["x", "y"], "0.5")):
        folder.mkdir()  # b: other bytes, the same numbers
        (folder / "t.csv").write_text("setting,acc\n" + "".join(f"{cell},{acc}\n" for cell in cells))
    assert statuses(compare_trees(a, b)) == {"t.csv": "close"}
    (differs,) = compare_trees(a, c)
    assert differs.status == "differs" and differs.mismatches == ["[row 3, setting]: '' vs 'y'"]


def test_command_exit_status_and_report(tmp_path, capsys):
    a, close, far = (write_build(tmp_path / n, acc) for n, acc in [("a", 0.75), ("b", 0.75 + 1e-9), ("c", 0.8)])
    code, out, _ = run_cli(capsys, "compare-results", str(a), str(close))
    assert code == 0 and out.splitlines()[-1].startswith(
        "AGREE within rtol=1e-05, atol=1e-08: 2 files byte-equal, 1 equal"
    )
    assert "close    study/final.csv: 8 values" in out
    code, out, _ = run_cli(capsys, "compare-results", str(a), str(far), "--rtol", "0.01")
    assert code == 1 and "DIFFER within rtol=0.01" in out
    assert "[row 2, query_accuracy]: 0.75 vs 0.8" in out
    code, out, _ = run_cli(capsys, "compare-results", str(a / "claims.json"), str(far / "claims.json"))
    assert code == 0 and "AGREE" in out
    code, _, err = run_cli(capsys, "compare-results", str(a), str(far / "claims.json"))
    assert code == 2 and "give two folders or two files" in err
    code, _, err = run_cli(capsys, "compare-results", str(a), str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err


def test_unreadable_files_are_reported_not_raised(tmp_path):
    a, b = write_build(tmp_path / "a", 0.75), write_build(tmp_path / "b", 0.75)
    (b / "claims.json").write_text("{not json")
    claims = {r.path: r for r in compare_trees(a, b)}["claims.json"]
    assert claims.status == "differs" and "cannot be read as .json" in claims.mismatches[0]


@pytest.mark.dag
@pytest.mark.xdist_group("dag")
def test_real_results_agree_with_a_rounding_perturbed_copy_and_not_with_a_flipped_verdict(ci_pipeline, tmp_path):
    """On the ci build's results/: every number nudged by one part in 1e9 still agrees (every table
    and JSON parses and compares); one claim's verdict changed is found and named."""
    work, _, _ = ci_pipeline
    results = work / "results"
    nudged = tmp_path / "nudged"
    shutil.copytree(results, nudged)
    for path in nudged.rglob("*.csv"):
        frame = pd.read_csv(path)
        floats = frame.select_dtypes("float").columns
        frame[floats] = frame[floats] * (1 + 1e-9)
        frame.to_csv(path, index=False)
    compared = compare_trees(results, nudged)
    assert all(r.agrees for r in compared), [r for r in compared if not r.agrees]
    assert any(r.status == "close" and r.compared > 0 for r in compared)

    record = json.loads((nudged / "claims.json").read_text())
    claim = next(iter(record["claims"])) if isinstance(record["claims"], list) else None
    assert claim is not None, "claims.json lists claims"
    claim["verdict"] = "fails" if claim["verdict"] != "fails" else "holds"
    (nudged / "claims.json").write_text(json.dumps(record))
    differing = [r for r in compare_trees(results, nudged) if not r.agrees]
    assert [r.path for r in differing] == ["claims.json"]
    assert any(m.endswith(f"'{claim['verdict']}'") and ".verdict" in m for m in differing[0].mismatches)
    assert np.isfinite(differing[0].max_abs)


def test_ignored_json_keys_are_not_compared(tmp_path, capsys):
    """MLflow run ids are each build's own: `--ignore-key mlflow` leaves them out, and only them."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"mlflow": {"run": "1a"}, "p": 0.5}))
    b.write_text(json.dumps({"mlflow": {"run": "2b"}, "p": 0.5}))
    assert statuses(compare_trees(a, b)) == {"a.json": "differs"}
    assert statuses(compare_trees(a, b, Tolerance(ignore_keys=frozenset({"mlflow"})))) == {"a.json": "close"}
    code, out, _ = run_cli(capsys, "compare-results", str(a), str(b), "--ignore-key", "mlflow")
    assert code == 0 and "(JSON keys ignored: mlflow)" in out
    b.write_text(json.dumps({"mlflow": {"run": "2b"}, "p": 0.6}))
    assert run_cli(capsys, "compare-results", str(a), str(b), "--ignore-key", "mlflow")[0] == 1
