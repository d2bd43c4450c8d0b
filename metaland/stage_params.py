"""What each DVC stage reads of params.yaml, as one small file per stage (written by `check-params`).

A stage's ``params:`` in dvc.yaml makes DVC copy every tracked key into dvc.lock, and DVC parses and
rewrites the whole lock after every stage: with the probe block of a study (about 75 lines per probe
stage) the default profile's lock held 375 kB, and its rewrite cost about 2 s per stage, 38% of the build
with start-up (docs/performance.md). So the `check-params` stage, which runs first on any edit of
params.yaml, writes the keys each stage reads into ``<stage>.json`` (canonical JSON of the file's own
values), and each stage depends on that one file: four lines of dvc.lock instead of up to 75. A stage
reruns exactly when one of its keys changes, as with ``params:``; the stage itself still reads
params.yaml (and fails if the file changes while it runs: ``metaland.cli._still_reads``). The price: right
after an edit, ``dvc status`` lists only check-params, whose files are not yet rewritten
(``dvc repro check-params && dvc status`` lists the stages the edit reruns).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metaland.io import atomic_dir, dumps_json, write_text

VALID = "valid"
"""The file of the output folder that only says the params are valid: the same bytes for every valid
file, for the stages that read no key themselves (plot)."""


def stage_params(raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The keys of the params file ``raw`` (as parsed) each stage reads, by DVC stage name: ``fetch@<dataset>``
    its dataset block, ``train@<run>`` the run, its study's defaults and the seed offset, ``probe@<run>`` the
    run and its study's extract and probe blocks, ``aggregate`` every run and study."""
    runs, studies = raw.get("runs") or {}, raw.get("studies") or {}

    def study_blocks(run: Mapping[str, Any], *blocks: str) -> dict[str, Any]:
        study = studies.get(run.get("study"), {})
        return {run.get("study"): {block: study.get(block) for block in blocks}}

    picked: dict[str, dict[str, Any]] = {
        f"fetch@{name}": {"datasets": {name: block}} for name, block in (raw.get("datasets") or {}).items()
    }
    for key, run in runs.items():
        picked[f"train@{key}"] = {
            "runs": {key: run},
            "studies": study_blocks(run, "defaults"),
            "seed_offset": raw.get("seed_offset"),
        }
        picked[f"probe@{key}"] = {"runs": {key: run}, "studies": study_blocks(run, "extract", "probe")}
    picked["aggregate"] = {"runs": runs, "studies": studies}
    return picked


def write_stage_params(raw: Mapping[str, Any], folder: Path) -> int:
    """Replace ``folder`` with one ``<stage>.json`` per stage and the :data:`VALID` file; return the number
    of stage files. Nothing is left half-written: the folder is built beside it and renamed into place."""
    picked = stage_params(raw)
    with atomic_dir(folder) as tmp:
        write_text(tmp / VALID, "params valid\n")
        for stage, values in picked.items():
            write_text(tmp / f"{stage}.json", dumps_json(values))
    return len(picked)
