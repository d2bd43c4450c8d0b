"""Scale profiles and the knob listing.

``profiles/<name>.yaml`` are complete params files: ``ci`` (the whole DAG in minutes, used by the
tests), ``default`` (CPU-sized; what ``params.yaml`` holds in the repository), ``long`` (the default's
runs in three seeds each and 600 probe tasks: what the claims need to decide) and ``paper`` (the
seeds' published settings, for GPU machines). ``metaland profile <name>`` validates one and makes
it ``params.yaml``; DVC then reruns exactly the stages whose params changed.
"""

from __future__ import annotations

import re
from pathlib import Path

from metaland.config import (
    AggregateConfig,
    ExtractConfig,
    ProbeConfig,
    RunBlock,
    TopLevel,
    TrainConfig,
    describe,
    resolve,
)
from metaland.errors import ConfigError
from metaland.io import write_text
from metaland.params_file import load_yaml, read_params_text
from metaland.schema import Params


def use_profile(name: str, profiles_dir: Path, params_path: Path, *, force: bool = False) -> str:
    source = Path(profiles_dir) / f"{name}.yaml"
    if not source.is_file():
        raise ConfigError(f"profile {name!r} not found at {source}. Fix: run from the repository root.")
    text = read_params_text(source)
    resolve(load_yaml(text, str(source)), source=str(source))
    if params_path.is_file() and not force:
        current = params_path.read_bytes()  # compared as bytes: a file that is not UTF-8 is an edit too
        known = {p.read_bytes() for p in Path(profiles_dir).glob("*.yaml")}
        if current not in known:
            raise ConfigError(
                f"{params_path} has edits that match no profile; switching would lose them. Fix: save them "
                f"elsewhere (or commit them), then rerun with --force."
            )
    write_text(params_path, text)
    return f"{params_path} is now the {name!r} profile; `dvc repro` reruns what it changes."


LONG_SEEDS = 3
LONG_TASKS = 600
LONG_EXTRACT_EVERY = 1
"""Where the default probes checkpoints of the schedule (``extract.every`` ≥ 1), the long profile probes every
one: the default thins them to keep within 20 minutes, the per-run trend statistics want them all."""
LONG_HEADER = "\n".join(
    [
        "# Profile `long`: the default profile's runs with 3 training seeds each (the unit of replication of every",
        "# claim, docs/claims.md: a stratum needs aggregate.min_seeds = 3 before a claim can hold or fail), the",
        "# fixed probe task sets of 600 tasks (the field's convention for accuracy; the costly probes keep their",
        "# own task counts), and every checkpoint of a study's schedule probed. Everything else is the default",
        "# profile's. Same data, same models, same iterations.",
        "# Generated from profiles/default.yaml by `python -m metaland profile --write-long`: edit the default.",
        "# Every knob is listed; `python -m metaland params` explains each one. Switch scale with",
        "# `python -m metaland profile <ci|default|long|paper>`.",
    ]
)
_RUN_LINE = re.compile(r"^  ([a-z0-9][a-z0-9._\-]*)-s(\d+): (\{.*\})$")


def long_profile(default_text: str) -> str:
    """The ``long`` profile's text from the ``default`` profile's: every run family (a run key without its
    ``-s<seed>``) in :data:`LONG_SEEDS` consecutive seeds from its lowest, every study's probe task set
    of :data:`LONG_TASKS` tasks, and ``extract.every`` of :data:`LONG_EXTRACT_EVERY` where the default's is
    not 0; the default's other lines unchanged."""
    lines = default_text.splitlines()
    body = lines[next(i for i, line in enumerate(lines) if not line.startswith("#")) :]
    out, families, in_runs = LONG_HEADER.splitlines(), set(), False
    for line in body:
        match = _RUN_LINE.match(line) if in_runs else None
        if line == "profile: default":
            out.append("profile: long")
        elif re.fullmatch(r"      tasks: \d+", line):
            out.append(f"      tasks: {LONG_TASKS}")
        elif re.match(r"    extract: \{every: [1-9]\d*,", line):
            out.append(re.sub(r"every: \d+", f"every: {LONG_EXTRACT_EVERY}", line, count=1))
        elif match:
            stem, seed, entry = match.group(1), int(match.group(2)), match.group(3)
            if stem not in families:  # the family's other seeds in the default are covered by this one
                families.add(stem)
                out += [
                    f"  {stem}-s{s}: " + re.sub(r"seed: \d+", f"seed: {s}", entry, count=1)
                    for s in range(seed, seed + LONG_SEEDS)
                ]
        else:
            in_runs = in_runs or line.startswith("runs:")
            out.append(line)
    return "\n".join(out) + "\n"


def knob_table() -> str:
    """Every block's fields: name, type and range, default, description."""
    from metaland.data import DATASETS
    from metaland.meta import ALGORITHMS
    from metaland.models import MODELS
    from metaland.probes import PROBES

    blocks: list[tuple[str, type[Params]]] = [
        ("params.yaml (top level)", TopLevel),
        ("runs.<run> (after merging studies.<study>.defaults)", RunBlock),
        ("runs.<run>.train / studies.<study>.defaults.train", TrainConfig),
        ("studies.<study>.extract", ExtractConfig),
        ("studies.<study>.probe", ProbeConfig),
        ("studies.<study>.aggregate", AggregateConfig),
    ]
    blocks += [(f"datasets.{name}", spec.config_model) for name, spec in DATASETS.items()]
    blocks += [(f"model: {{name: {name}, ...}}", spec.config_model) for name, spec in MODELS.items()]
    blocks += [(f"train.algorithm_options (algorithm {name})", spec.options_model) for name, spec in ALGORITHMS.items()]
    blocks += [(f"studies.<study>.probe.probes.{name}", spec.options_model) for name, spec in PROBES.items()]
    lines = []
    for title, model in blocks:
        rows = describe(model)
        lines.append(f"\n{title}" + ("" if rows else "  (no options)"))
        for name, kind, default, text in rows:
            lines.append(f"  {name:<18} {kind:<36} default {default:<14} {text}")
    return "\n".join(lines).lstrip("\n")
