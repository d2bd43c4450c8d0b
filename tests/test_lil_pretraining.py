"""Seed 004 App. E / App. C: label-free BYOL-style LIL pretraining, then FOMAML (``lil-pretrain``),
against a float64 autograd reference of the stated loss, the hand-written EMA, and exact resume."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch

from metaland.checkpoints import load_groups, save_checkpoint
from metaland.config import load_params
from metaland.errors import ConfigError
from metaland.extract import select
from metaland.io import file_digest
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import cross_entropy
from metaland.meta.lil_pretrain import LILPretrainOptions, ema_teacher
from metaland.meta.train import train
from metaland.models import flatten
from metaland.schema import NoOptions
from tests.helpers import DATASET_PARAMS, make_run
from tests.reference import leaves, make_tasks, reference_adapt, reference_forward, reference_loss, tiny_model
from tests.test_math_inner import assert_dicts_close
from tests.test_train import CPU, digests

SPEC = ALGORITHMS.get("lil-pretrain")
STEPS, LR = 2, 0.4


def teacher_of(params: dict) -> dict:
    """A teacher that is not θ (an EMA after some steps), so a mix-up of the two cannot pass."""
    g = torch.Generator().manual_seed(7)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in params.items()}


def reference_pretraining_gradient(params, teacher, batch, options: LILPretrainOptions) -> dict:
    """∇_θ mean_τ λ KL(s(f(q|θ*_teacher)) ‖ s(f(q|θ − δ d/‖d‖))), d = ∇L_support(θ), by hand (App. E)."""
    theta = leaves(params)
    objectives = []
    for i in range(len(batch)):
        sx, sy, qx, _ = (t[i] for t in batch.tensors())
        points = [teacher]
        for _ in range(STEPS):
            points.append(reference_adapt(points[-1], sx, sy, steps=1, lr=LR))
        start = teacher if options.distance == "teacher_path" else params
        path = [start]
        for _ in range(STEPS):
            path.append(reference_adapt(path[-1], sx, sy, steps=1, lr=LR))
        delta = sum((flatten(b) - flatten(a)).norm() for a, b in pairwise(path))
        support = torch.autograd.grad(
            reference_loss(theta, sx, sy), list(theta.values()), create_graph=not options.student_first_order
        )
        norm = torch.sqrt(sum(d.square().sum() for d in support))
        hat = {k: theta[k] - delta * d / norm for k, d in zip(theta, support, strict=True)}
        p_log = torch.log_softmax(reference_forward(points[-1], qx), -1)
        q_log = torch.log_softmax(reference_forward(hat, qx), -1)
        objectives.append(options.pretrain_weight * (p_log.exp() * (p_log - q_log)).sum(-1).mean())
    grads = torch.autograd.grad(torch.stack(objectives).mean(), list(theta.values()))
    return dict(zip(theta, grads, strict=True))


def setup(n_tasks: int = 3):
    _, forward, params = tiny_model()
    problem = MetaProblem(forward, cross_entropy(forward), STEPS, LR, 2, None)
    return problem, params, make_tasks(n_tasks)


@pytest.mark.parametrize(("distance", "student_first_order"), [("teacher_path", False), ("student_path", True)])
def test_pretraining_gradient_equals_the_stated_loss_with_a_stop_gradient_teacher(distance, student_first_order):
    """The student's gradient is autograd's on the hand-written App. E loss, the teacher a constant."""
    problem, params, batch = setup()
    teacher = teacher_of(params)
    options = LILPretrainOptions(
        pretrain_iterations=5, pretrain_weight=0.7, distance=distance, student_first_order=student_first_order
    )
    grads, metrics = SPEC.meta_gradient(problem, params, batch, options, state=teacher, step=4)
    expected = reference_pretraining_gradient(params, teacher, batch, options)
    assert_dicts_close(grads, expected, rtol=1e-9, atol=1e-12)
    assert metrics["outer_loss"] == pytest.approx(0.7 * metrics["phase_loss"]) and metrics["phase_loss"] > 0


def test_pretraining_uses_no_query_label():
    """Permuting the query labels changes nothing in the pretraining gradient (App. E: no label of the outer loop)."""
    problem, params, batch = setup()
    teacher = teacher_of(params)
    options = LILPretrainOptions(pretrain_iterations=5)
    permuted = type(batch)(batch.support_x, batch.support_y, batch.query_x, batch.query_y.flip(-1))
    assert not torch.equal(permuted.query_y, batch.query_y)
    grads, _ = SPEC.meta_gradient(problem, params, batch, options, state=teacher, step=0)
    again, _ = SPEC.meta_gradient(problem, params, permuted, options, state=teacher, step=0)
    assert all(torch.equal(grads[k], again[k]) for k in grads)


def test_meta_training_switches_to_fomaml_exactly_at_the_end_of_pretraining():
    problem, params, batch = setup()
    teacher = teacher_of(params)
    options = LILPretrainOptions(pretrain_iterations=5)
    fomaml, _ = ALGORITHMS.get("fomaml").meta_gradient(problem, params, batch, NoOptions())
    after, _ = SPEC.meta_gradient(problem, params, batch, options, state=teacher, step=5)
    before, _ = SPEC.meta_gradient(problem, params, batch, options, state=teacher, step=4)
    assert all(torch.equal(after[k], fomaml[k]) for k in fomaml)
    assert not torch.allclose(before["4.weight"], fomaml["4.weight"])
    assert SPEC.variant_of(options) == "fomaml+lil-pretrain"


def test_teacher_is_the_ema_of_theta_during_pretraining_and_fixed_after():
    _, _, params = tiny_model()
    teacher = teacher_of(params)
    options = LILPretrainOptions(pretrain_iterations=3, momentum=0.9)
    updated = ema_teacher(teacher, params, 2, options)
    assert_dicts_close(updated, {k: 0.9 * teacher[k] + 0.1 * params[k] for k in params}, rtol=0, atol=1e-15)
    assert ema_teacher(teacher, params, 3, options) is teacher
    start = SPEC.state_at_start(params, options)
    assert all(torch.equal(start[k], params[k]) and start[k] is not params[k] for k in params)


def test_killed_mid_pretraining_resumes_bit_for_bit_with_its_teacher(tiny_dataset, tmp_path):
    """Checkpoints hold the teacher; a run stopped at step 4 of 6 pretraining steps continues exactly.
    The end of pretraining (step 6) is checkpointed although checkpoint_every is 4."""
    options = {"pretrain_iterations": 6, "momentum": 0.5}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(make_run("lil-pretrain", options), DATASET_PARAMS, tiny_dataset, straight, device=CPU)
    assert [c.step for c in result.checkpoints] == [0, 4, 6, 8, 12]
    train(make_run("lil-pretrain", options, iterations=4), DATASET_PARAMS, tiny_dataset, resumed, device=CPU)
    again = train(make_run("lil-pretrain", options), DATASET_PARAMS, tiny_dataset, resumed, device=CPU)
    assert again.resumed_from == 4
    assert digests(straight) == digests(resumed)
    at = {c.step: load_groups(c) for c in result.checkpoints}
    assert set(at[4]) == {"params", "adam_m", "adam_v", "algorithm_state"}
    assert torch.equal(at[6]["algorithm_state"]["4.weight"], at[12]["algorithm_state"]["4.weight"])
    assert not torch.equal(at[4]["algorithm_state"]["4.weight"], at[6]["algorithm_state"]["4.weight"])
    assert not torch.equal(at[6]["algorithm_state"]["4.weight"], at[6]["params"]["4.weight"])


def test_a_stateless_checkpoint_is_the_file_it_was_before_algorithm_state(tmp_path):
    """An empty algorithm_state group adds no tensor: stateless runs write (and load) the old files."""
    groups = {"params": {"w": torch.ones(2)}, "adam_m": {"w": torch.zeros(2)}, "adam_v": {"w": torch.zeros(2)}}
    old = save_checkpoint(tmp_path / "old", 3, groups, params_hash="h", metrics={})
    new = save_checkpoint(tmp_path / "new", 3, {**groups, "algorithm_state": {}}, params_hash="h", metrics={})
    assert file_digest(old.path) == file_digest(new.path)
    assert set(load_groups(old)) == {"params", "adam_m", "adam_v"}


def test_extract_always_keeps_the_end_of_pretraining():
    from metaland.checkpoints import Checkpoint
    from metaland.config import ExtractConfig

    checkpoints = [Checkpoint(None, {"step": s, "metrics": {}}) for s in (0, 4, 6, 8, 12)]
    chosen = select(checkpoints, ExtractConfig(every=0, best=False, final=True), {6: "pretrained", 7: "other"})
    assert chosen == {6: ["pretrained"], 12: ["final"]}


def test_end_of_pretraining_off_the_logging_grid_is_refused(tmp_path):
    text = (Path(__file__).parents[1] / "profiles" / "ci.yaml").read_text()
    key = "lil2022-fomamllil-omniglot-small-5w1s-s0"
    assert key in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace("pretrain_iterations: 10", "pretrain_iterations: 7", 1))
    with pytest.raises(ConfigError, match=r"pretrained milestone .* step 7 .* multiple of train.log_every = 5"):
        load_params(path)


def test_study_tables_keep_the_tasks_at_the_initial_checkpoint_and_at_the_end_of_pretraining(tmp_path):
    from metaland.results import build_tables

    runs = [make_run("lil-pretrain", {"pretrain_iterations": 4}), make_run("maml")]
    for run in runs:
        folder = tmp_path / "probes" / run.key
        folder.mkdir(parents=True)
        steps = (0, 4, 8, 12)
        (folder / "checkpoints.csv").write_text("run,step,query_accuracy\n" + "".join(f"r,{s},0.5\n" for s in steps))
        rows = "".join(f"r,{s},{t},{s / 100 + t}\n" for s in steps for t in range(2))
        (folder / "tasks.csv").write_text("run,step,task,query_accuracy\n" + rows)
    tables = build_tables("guiroy2019", runs, tmp_path / "probes", tmp_path / "runs")
    kept = tables.milestone_tasks.groupby(["algorithm", "milestone"])["step"].unique().to_dict()
    assert {k: list(v) for k, v in kept.items()} == {
        ("lil-pretrain", "initial"): [0],
        ("lil-pretrain", "pretrained"): [4],
        ("maml", "initial"): [0],
    }
    assert len(tables.milestone_tasks) == 6 and set(tables.final_tasks["step"]) == {12}
