"""Sharp-MAML (seed 002, steps 1-9) against MAML bit for bit and against the poster's steps
written out by hand with plain ``torch.autograd`` on the hand-written model of tests/reference.py."""

from __future__ import annotations

import pytest
import torch

from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import cross_entropy
from metaland.meta.sharp import SharpMAMLOptions, gradient_evaluations, radii_of, sam_perturbation, variant_name
from metaland.schema import NoOptions
from tests.reference import LR, leaves, make_tasks, reference_loss, tiny_model

N_TASKS = 3
ALPHA = 0.3  # large radii, so that a wrong perturbation cannot hide in the tolerance


def _problem(forward, steps: int, chunk: int = 0) -> MetaProblem:
    return MetaProblem(forward, cross_entropy(forward), steps, LR, chunk)


def _sharp(forward, params, batch, steps: int, **options):
    return ALGORITHMS.get("sharpmaml").meta_gradient(
        _problem(forward, steps), params, batch, SharpMAMLOptions(**options)
    )


# --------------------------------------------------------------------------------------------
# The poster's steps, by hand
# --------------------------------------------------------------------------------------------


def _grad(loss, params: dict, *, create_graph: bool) -> dict:
    """∇ loss with respect to ``params`` (leaves or intermediate tensors); the graph is kept."""
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, retain_graph=True)
    return dict(zip(params, grads, strict=True))


def _epsilon(grads: dict, radius: float) -> dict:
    """α g / ‖g‖₂ with the norm over all tensors (poster steps 3 and 7)."""
    norm = torch.sqrt(sum(g.square().sum() for g in grads.values()))
    return {k: radius * g / norm for k, g in grads.items()}


def _sam_inner(start: dict, sx, sy, *, steps, alpha_low, first_lower, differentiate):
    """``steps`` SAM steps from ``start``: gradient at θ^(k) + ε_m^(k), the first ε_m given."""
    current = start
    for k in range(steps):
        at = dict(current)
        if alpha_low > 0:
            if k == 0 and first_lower is not None:
                lower = first_lower
            else:
                lower = _epsilon(_grad(reference_loss(current, sx, sy), current, create_graph=differentiate), alpha_low)
                lower = lower if differentiate else {n: v.detach() for n, v in lower.items()}
            at = {n: v + lower[n] for n, v in current.items()}
        g = _grad(reference_loss(at, sx, sy), at, create_graph=True)
        current = {n: v - LR * g[n] for n, v in current.items()}
    return current


def poster_meta_gradient(params, batch, *, steps, alpha_low, alpha_up, differentiate=False) -> dict:
    """Steps 1-9 of the poster, one task at a time, mean over tasks, second order."""

    def pass_(upper: dict | None, lowers: list | None):
        theta = leaves(params)
        total = {k: torch.zeros_like(v) for k, v in theta.items()}
        kept = []
        for m in range(N_TASKS):
            sx, sy, qx, qy = (t[m] for t in batch.tensors())
            lower = None
            if alpha_low > 0:
                if lowers is not None and not differentiate:
                    lower = lowers[m]  # step 8 reuses step 3's ε_m
                else:  # step 3 at θ^t
                    lower = _epsilon(_grad(reference_loss(theta, sx, sy), theta, create_graph=differentiate), alpha_low)
                    lower = lower if differentiate else {n: v.detach() for n, v in lower.items()}
            kept.append(None if lower is None else {n: v.detach() for n, v in lower.items()})
            start = theta if upper is None else {n: v + upper[n] for n, v in theta.items()}
            adapted = _sam_inner(
                start, sx, sy, steps=steps, alpha_low=alpha_low, first_lower=lower, differentiate=differentiate
            )
            g = _grad(reference_loss(adapted, qx, qy), theta, create_graph=False)
            total = {k: total[k] + g[k] / N_TASKS for k in total}
        return total, kept

    grads, lowers = pass_(None, None)  # steps 1-6: G
    if alpha_up == 0:
        return grads
    upper = _epsilon(grads, alpha_up)  # step 7, a constant
    return pass_(upper, lowers)[0]  # steps 8-9


@pytest.mark.parametrize(
    ("alpha_low", "alpha_up", "steps"),
    [(ALPHA, 0.0, 1), (0.0, ALPHA, 1), (ALPHA, ALPHA, 1), (ALPHA, ALPHA, 2)],
    ids=["low", "up", "both", "both-T2"],
)
def test_meta_gradient_matches_the_posters_steps_by_hand(alpha_low, alpha_up, steps):
    _, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    expected = poster_meta_gradient(params, batch, steps=steps, alpha_low=alpha_low, alpha_up=alpha_up)
    got, _ = _sharp(forward, params, batch, steps, alpha_low=alpha_low, alpha_up=alpha_up)
    maml, _ = ALGORITHMS.get("maml").meta_gradient(_problem(forward, steps), params, batch, NoOptions())
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-9, atol=1e-11)
    assert max((got[k] - maml[k]).abs().max().item() for k in got) > 1e-3  # the perturbations matter here


def test_differentiated_lower_perturbation_matches_autograd_through_epsilon():
    _, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    expected = poster_meta_gradient(params, batch, steps=1, alpha_low=ALPHA, alpha_up=ALPHA, differentiate=True)
    constant = poster_meta_gradient(params, batch, steps=1, alpha_low=ALPHA, alpha_up=ALPHA)
    got, _ = _sharp(forward, params, batch, 1, alpha_low=ALPHA, alpha_up=ALPHA, differentiate_lower_perturbation=True)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-9, atol=1e-11)
    assert max((expected[k] - constant[k]).abs().max().item() for k in expected) > 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_zero_radii_are_maml_bit_for_bit(first_order):
    _, forward, params = tiny_model(torch.float32)
    batch = make_tasks(4, dtype=torch.float32)
    reference = "fomaml" if first_order else "maml"
    for chunk in (0, 3):
        problem = _problem(forward, 2, chunk)
        maml, maml_metrics = ALGORITHMS.get(reference).meta_gradient(problem, params, batch, NoOptions())
        options = SharpMAMLOptions(alpha_low=0.0, alpha_up=0.0, first_order=first_order)
        sharp, metrics = ALGORITHMS.get("sharpmaml").meta_gradient(problem, params, batch, options)
        assert all(torch.equal(maml[k], sharp[k]) for k in maml)
        assert {k: metrics[k] for k in maml_metrics} == maml_metrics


def test_sum_over_tasks_scales_the_mean_by_the_meta_batch():
    _, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    mean, _ = _sharp(forward, params, batch, 1, alpha_low=ALPHA, alpha_up=ALPHA)
    total, _ = _sharp(forward, params, batch, 1, alpha_low=ALPHA, alpha_up=ALPHA, task_reduction="sum")
    for k in mean:
        torch.testing.assert_close(total[k], N_TASKS * mean[k], rtol=1e-12, atol=0)


def test_sam_perturbation_has_the_radius_and_the_gradients_direction():
    g = {"a": torch.tensor([3.0, 0.0], dtype=torch.float64), "b": torch.tensor([[0.0, 4.0]], dtype=torch.float64)}
    eps = sam_perturbation(g, 0.5, "global")  # ‖g‖ = 5
    torch.testing.assert_close(eps["a"], torch.tensor([0.3, 0.0], dtype=torch.float64))
    torch.testing.assert_close(eps["b"], torch.tensor([[0.0, 0.4]], dtype=torch.float64))
    per_tensor = sam_perturbation(g, 0.5, "per_tensor")
    assert all(v.norm().item() == pytest.approx(0.5) for v in per_tensor.values())
    zero = sam_perturbation({"a": torch.zeros(3)}, 0.5, "global")
    assert torch.equal(zero["a"], torch.zeros(3))


@pytest.mark.parametrize(("alpha_low", "alpha_up"), [(0.0, 0.0), (ALPHA, 0.0), (0.0, ALPHA), (ALPHA, ALPHA)])
@pytest.mark.parametrize("steps", [1, 3])
def test_gradient_evaluations_count_the_support_gradients_taken(alpha_low, alpha_up, steps):
    """The logged cost equals the support-loss gradients actually evaluated per task, plus one
    meta-backward per pass (vmap traces the per-task function once, so calls count per task)."""
    _, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    calls = []
    support_loss = cross_entropy(forward)

    def counted(p, x, y):
        calls.append(1)
        return support_loss(p, x, y)

    problem = MetaProblem(forward, counted, steps, LR, 0)
    options = SharpMAMLOptions(alpha_low=alpha_low, alpha_up=alpha_up)
    _, metrics = ALGORITHMS.get("sharpmaml").meta_gradient(problem, params, batch, options)
    passes = 2 if alpha_up > 0 else 1
    assert metrics["gradient_evaluations"] == gradient_evaluations(options, steps) == len(calls) + passes


def test_variant_names_follow_the_poster():
    names = {
        (0.0, 0.0): "maml",
        (0.05, 0.0): "sharpmaml-low",
        (0.0, 0.05): "sharpmaml-up",
        (0.05, 0.05): "sharpmaml-both",
    }
    for (low, up), name in names.items():
        assert variant_name(SharpMAMLOptions(alpha_low=low, alpha_up=up)) == name
        assert ALGORITHMS.get("sharpmaml").variant_of(SharpMAMLOptions(alpha_low=low, alpha_up=up)) == name
    assert ALGORITHMS.get("maml").variant_of(NoOptions()) == "maml"


@pytest.mark.parametrize(
    ("alpha_low", "alpha_up", "name"),
    [(0.1, 0.1, "sharpmaml-both@0.1"), (0.2, 0.0, "sharpmaml-low@0.2"), (0.0, 0.01, "sharpmaml-up@0.01"),
     (0.1, 0.05, "sharpmaml-both@0.1/0.05"), (0.05, 0.5, "sharpmaml-both@0.05/0.5"),
     (0.123456789, 0.123456789, "sharpmaml-both@0.123456789")],
)  # fmt: skip
def test_radii_other_than_the_default_name_a_variant_of_their_own(alpha_low, alpha_up, name):
    """A sweep's run is never one of the poster's four variants, and its name gives its radii back exactly."""
    options = SharpMAMLOptions(alpha_low=alpha_low, alpha_up=alpha_up)
    assert variant_name(options) == name
    assert radii_of(name) == (alpha_low, alpha_up)
    for low, up in [(0.0, 0.0), (0.05, 0.0), (0.0, 0.05), (0.05, 0.05)]:
        assert radii_of(variant_name(SharpMAMLOptions(alpha_low=low, alpha_up=up))) == (low, up)
    with pytest.raises(ValueError, match="is not a sharpmaml variant"):
        radii_of("anil")


@pytest.mark.parametrize(("alpha_low", "alpha_up"), [(0.0, 0.0), (ALPHA, 0.0), (0.0, ALPHA), (ALPHA, ALPHA)])
def test_the_logged_gradient_norm_is_that_of_the_unperturbed_pass(alpha_low, alpha_up):
    """``meta_gradient_sq_norm`` is ‖G‖² of steps 1-6 (θ unperturbed), whatever α_up does afterwards: the
    poster's steps by hand with α_up = 0 give G."""
    _, forward, params = tiny_model()
    batch = make_tasks(N_TASKS)
    first_pass = poster_meta_gradient(params, batch, steps=1, alpha_low=alpha_low, alpha_up=0.0)
    _, metrics = _sharp(forward, params, batch, 1, alpha_low=alpha_low, alpha_up=alpha_up)
    expected = sum(g.square().sum() for g in first_pass.values()).item()
    assert metrics["meta_gradient_sq_norm"] == pytest.approx(expected, rel=1e-9)


def test_negative_radius_is_refused():
    with pytest.raises(ValueError, match="alpha_low"):
        SharpMAMLOptions(alpha_low=-0.1)


def test_subset_inner_loop_is_refused_with_a_fix():
    _, forward, params = tiny_model()
    problem = MetaProblem(forward, cross_entropy(forward), 1, LR, 0, frozenset(list(params)[:2]))
    options = SharpMAMLOptions()
    with pytest.raises(ConfigError, match=r"train.inner_params must be all\. Fix: remove train.inner_params"):
        ALGORITHMS.get("sharpmaml").meta_gradient(problem, params, make_tasks(2), options)
