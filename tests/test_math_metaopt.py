"""Learned inner updates of seed 003 §4 (Meta-SGD, Meta-Curvature, KLin, KFC) against explicit
matrices, hand-derived steps and finite differences in float64; the paper's parameter counts;
frozen layers; the linear and CNN models of the study."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metaland.data.tasks import TaskBatch
from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.inner import adapt, adapted_names, cross_entropy
from metaland.meta.metaopt import KFCOptions, KLinOptions, kfc_transform, kronecker_transform, learned_step
from metaland.models import build_model, head_names, initial_params, make_forward
from metaland.models.cnn import CNNParams
from metaland.models.linear import LinearParams
from metaland.probes import ProbeContext
from metaland.probes.layerwise import LayerwiseOptions, layerwise
from metaland.schema import NoOptions

D = torch.float64
ALPHA = 0.3


def _learned(algorithm: str, params: dict, options=None, adapted=None) -> dict:
    spec = ALGORITHMS.get(algorithm)
    return spec.meta_parameters(params, adapted, options or spec.options_model())


def _count(phi: dict, params: dict) -> int:
    return sum(v.numel() for k, v in phi.items() if k not in params)


# --------------------------------------------------------------------------------------------
# Parameter counts (seed 003 A.1.1, A.1.2)
# --------------------------------------------------------------------------------------------


def test_optimizer_sizes_match_the_paper():
    """Synthetic LR (1 × 100 weight, no bias): KLin 10,001, KFC with 2 maps 20,002; Omniglot
    multinomial LR (5 × 784): KLin 614,681 ≈ 614k (A.1.1)."""
    synthetic = {"fc.weight": torch.zeros(1, 100, dtype=D)}
    omniglot = {"fc.weight": torch.zeros(5, 784, dtype=D)}
    assert _count(_learned("klin", synthetic), synthetic) == 10_001
    assert _count(_learned("kfc", synthetic, KFCOptions(layers=2)), synthetic) == 20_002
    assert _count(_learned("klin", omniglot), omniglot) == 614_681
    assert _count(_learned("kfc", omniglot, KFCOptions(layers=4)), omniglot) == 4 * 614_681  # "2.5M"
    assert _count(_learned("metasgd", omniglot), omniglot) == 5 * 784


@pytest.mark.parametrize(
    ("options", "channels", "size", "expected"),
    [
        # Omniglot 10-way, 64 filters, spatial mean: 112,586 (4 layers), 38,474 (SCNN) (A.1.2)
        ({"blocks": 4, "filters": 64}, 1, 28, 112_586),
        ({"blocks": 2, "filters": 64}, 1, 28, 38_474),
        # CIFAR-FS 10-way, 32 filters, spatial mean: 29,226 and 10,602
        ({"blocks": 4, "filters": 32}, 3, 32, 29_226),
        ({"blocks": 2, "filters": 32}, 3, 32, 10_602),
        # miniImageNet 10-way, Finn et al.'s net: 32 filters, max-pool, an 800-input head: 36,906 and 18,282
        ({"blocks": 4, "filters": 32, "downsample": "maxpool", "head": "flatten", "grid": 5}, 3, 84, 36_906),
        ({"blocks": 2, "filters": 32, "downsample": "maxpool", "head": "flatten", "grid": 5}, 3, 84, 18_282),
    ],
)
def test_model_sizes_match_the_paper(options, channels, size, expected):
    """Every CNN parameter count seed 003 states (A.1.2) comes out of the model it describes, exactly."""
    module = build_model("cnn", CNNParams(**options), channels=channels, image_size=size, ways=10, seed=0)
    assert sum(p.numel() for p in module.parameters()) == expected
    assert module(torch.zeros(2, channels, size, size, dtype=torch.float32)).shape == (2, 10)
    if options.get("head") == "flatten":
        assert module.fc.in_features == 800


def test_the_linear_model_is_a_bare_weight():
    lr = build_model("linear", LinearParams(output="sigmoid"), channels=1, image_size=10, ways=2, seed=0)
    assert {k: tuple(v.shape) for k, v in lr.named_parameters()} == {"fc.weight": (1, 100)}


# --------------------------------------------------------------------------------------------
# The update rules against explicit matrices and hand-written steps
# --------------------------------------------------------------------------------------------


def _column_vec(matrix: torch.Tensor) -> torch.Tensor:
    """vec(G): columns stacked (the convention of A = Rᵀ ⊗ L, eq. 5)."""
    return matrix.T.reshape(-1)


def test_klin_step_is_the_explicit_kronecker_preconditioned_step():
    """θ' = θ − α A vec(G), A = Rᵀ ⊗ L built with torch.kron (eq. 5, no bias), on a 2 × 3 weight."""
    g = torch.Generator().manual_seed(0)
    theta, grad = torch.randn(2, 3, generator=g, dtype=D), torch.randn(2, 3, generator=g, dtype=D)
    left, right = torch.randn(2, 2, generator=g, dtype=D), torch.randn(3, 3, generator=g, dtype=D)
    current = {"w": theta, "metaopt.w.L1": left, "metaopt.w.R1": right}
    step = learned_step(lambda x, f: kronecker_transform(x, f, maps=1), adapt_optimizer=False)
    moved = step(None, current, {"w": grad}, ALPHA)
    explicit = torch.kron(right.T.contiguous(), left) @ _column_vec(grad)
    assert set(moved) == {"w"}
    torch.testing.assert_close(_column_vec(moved["w"]), _column_vec(theta) - ALPHA * explicit)


def test_conv_gradients_share_one_transform_across_filters():
    """A conv gradient (N, C, H, W) is N matrices C × HW, each L G_f R (A.1.2, learn2learn's dims)."""
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(4, 2, 3, 3, generator=g, dtype=D)
    factors = {"L1": torch.randn(2, 2, generator=g, dtype=D), "R1": torch.randn(9, 9, generator=g, dtype=D)}
    out = kronecker_transform(grad, factors, maps=1)
    for f in range(4):
        torch.testing.assert_close(out[f].reshape(2, 9), factors["L1"] @ grad[f].reshape(2, 9) @ factors["R1"])
    vector = torch.randn(5, generator=g, dtype=D)
    factors = {"L1": torch.randn(5, 5, generator=g, dtype=D), "R1": torch.randn(1, 1, generator=g, dtype=D)}
    torch.testing.assert_close(
        kronecker_transform(vector, factors, maps=1), factors["L1"] @ vector * factors["R1"][0, 0]
    )


def test_kfc_is_relu_between_kronecker_maps_and_not_gd_at_identity():
    """KFC (eqs. 6-7) with identity factors: g for g ≥ 0, but negative entries are clipped by the ReLU
    (so the paper's identity init is not a plain gradient step); with ``normalise``, ‖g‖·s·KFC(g/‖g‖)."""
    eye = {
        "L1": torch.eye(2, dtype=D),
        "R1": torch.eye(3, dtype=D),
        "L2": torch.eye(2, dtype=D),
        "R2": torch.eye(3, dtype=D),
    }
    positive = torch.rand(2, 3, dtype=D) + 0.1
    torch.testing.assert_close(kfc_transform(positive, eye, 2, False), positive)
    mixed = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]], dtype=D)
    torch.testing.assert_close(kfc_transform(mixed, eye, 2, False), mixed.clamp_min(0))
    g = torch.Generator().manual_seed(2)
    factors = {k: torch.randn(v.shape, generator=g, dtype=D) for k, v in eye.items()} | {
        "scale": torch.tensor(1.7, dtype=D)
    }
    by_hand = factors["L2"] @ torch.relu(factors["L1"] @ (mixed / mixed.norm()) @ factors["R1"]) @ factors["R2"]
    torch.testing.assert_close(kfc_transform(mixed, factors, 2, True), mixed.norm() * 1.7 * by_hand)


def test_metasgd_step_is_elementwise_learning_rates():
    g = torch.Generator().manual_seed(3)
    theta, grad, rates = (torch.randn(3, 2, generator=g, dtype=D) for _ in range(3))
    step = ALGORITHMS.get("metasgd").inner_update(NoOptions())
    moved = step(None, {"w": theta, "metaopt.w.a": rates}, {"w": grad}, ALPHA)
    torch.testing.assert_close(moved["w"], theta - ALPHA * rates * grad)


# --------------------------------------------------------------------------------------------
# Eq. 4 (the optimizer adapts in the inner loop) and the meta-gradient, by finite differences
# --------------------------------------------------------------------------------------------


def _tiny_linear(seed: int = 0):
    module = build_model("linear", LinearParams(hidden=[3]), channels=1, image_size=2, ways=3, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    params = {
        k: v.double() + 0.1 * torch.randn(v.shape, generator=g, dtype=D) for k, v in initial_params(module).items()
    }
    x = torch.randn(2, 6, 1, 2, 2, generator=g, dtype=D)
    y = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2)
    return module, make_forward(module), params, TaskBatch(x, y, torch.randn(2, 6, 1, 2, 2, generator=g, dtype=D), y)


def _perturbed(phi: dict, name: str, index: int, h: float) -> dict:
    moved = dict(phi)
    flat = phi[name].reshape(-1).clone()
    flat[index] += h
    moved[name] = flat.reshape(phi[name].shape)
    return moved


def test_optimizer_adaptation_is_gradient_descent_on_the_post_step_loss():
    """Eq. 4: φ' = φ − α ∇_φ L(θ − α U_φ(g)), the gradient checked by central differences."""
    _, forward, params, batch = _tiny_linear()
    loss = cross_entropy(forward)
    sx, sy = batch.support_x[0], batch.support_y[0]
    g = torch.Generator().manual_seed(4)
    phi = {
        k: v + 0.2 * torch.randn(v.shape, generator=g, dtype=D)
        for k, v in _learned("kfc", params).items()
        if k not in params
    }
    transform = lambda x, f: kfc_transform(x, f, 2, False)  # noqa: E731
    step = learned_step(transform, adapt_optimizer=True)
    grads = torch.func.grad(lambda p: loss(p, sx, sy))(params)
    moved = step(lambda full: loss(full, sx, sy), {**params, **phi}, grads, ALPHA)

    def post_step_loss(factors: dict) -> torch.Tensor:
        theta = {
            n: params[n]
            - ALPHA * transform(gr, {k.split(".")[-1]: v for k, v in factors.items() if k.startswith(f"metaopt.{n}.")})
            for n, gr in grads.items()
        }
        return loss(theta, sx, sy)

    h = 1e-6
    for name in phi:
        for index in (0, phi[name].numel() - 1):
            numeric = (
                post_step_loss(_perturbed(phi, name, index, h)) - post_step_loss(_perturbed(phi, name, index, -h))
            ) / (2 * h)
            expected = phi[name].reshape(-1)[index] - ALPHA * numeric
            torch.testing.assert_close(moved[name].reshape(-1)[index], expected, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("algorithm", "options"),
    [
        ("klin", KLinOptions()),
        ("kfc", KFCOptions(normalise=True)),
        ("metasgd", NoOptions()),
        ("metacurvature", NoOptions()),
    ],
)
def test_meta_gradient_of_model_and_optimizer_matches_finite_differences(algorithm, options):
    """The meta-gradient (second order, through two learned steps and eq. 4) of the mean query loss
    with respect to θ and φ, against central differences of the whole adaptation."""
    _, forward, params, batch = _tiny_linear(1)
    spec = ALGORITHMS.get(algorithm)
    g = torch.Generator().manual_seed(5)
    full = {
        k: v + (0.1 * torch.randn(v.shape, generator=g, dtype=D) if k not in params else 0)
        for k, v in spec.meta_parameters(params, None, options).items()
    }
    problem = MetaProblem(forward, cross_entropy(forward), 2, ALPHA, 0, None, spec.inner_update(options))
    grads, _ = spec.meta_gradient(problem, full, batch, options)

    def meta_loss(p: dict) -> torch.Tensor:
        losses = []
        for t in range(len(batch)):
            adapted = adapt(
                problem.loss, p, batch.support_x[t], batch.support_y[t], steps=2, lr=ALPHA, update=problem.update
            )
            losses.append(F.cross_entropy(forward(adapted, batch.query_x[t]), batch.query_y[t]))
        return torch.stack(losses).mean()

    h = 1e-6
    for name in full:
        index = full[name].numel() // 2
        numeric = (meta_loss(_perturbed(full, name, index, h)) - meta_loss(_perturbed(full, name, index, -h))) / (2 * h)
        torch.testing.assert_close(grads[name].reshape(-1)[index], numeric, rtol=1e-5, atol=1e-8)


def test_identity_meta_curvature_is_maml_at_initialisation():
    """L = R = I and no optimizer adaptation: the same adapted model and θ-meta-gradient as MAML."""
    _, forward, params, batch = _tiny_linear(2)
    spec = ALGORITHMS.get("metacurvature")
    full = spec.meta_parameters(params, None, NoOptions())
    learned = MetaProblem(forward, cross_entropy(forward), 2, ALPHA, 0, None, spec.inner_update(NoOptions()))
    plain = MetaProblem(forward, cross_entropy(forward), 2, ALPHA, 0)
    ours, _ = spec.meta_gradient(learned, full, batch, NoOptions())
    maml, _ = ALGORITHMS.get("maml").meta_gradient(plain, params, batch, NoOptions())
    for name in params:
        torch.testing.assert_close(ours[name], maml[name])


# --------------------------------------------------------------------------------------------
# Frozen layers (seed 003 §3.2) and the models
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["maml", "klin", "kfc"])
def test_frozen_layers_are_unchanged_by_the_inner_loop(algorithm):
    """Adapting only conv2 and fc (``train.inner_params``) leaves conv1's parameters exactly at θ,
    with plain or learned inner steps; the adapted parameters move, each one whose support-loss
    gradient at θ is non-zero (conv2's bias feeds BatchNorm: its gradient is zero in exact arithmetic,
    so whether rounding moves it is no property of the inner loop)."""
    module = build_model("cnn", CNNParams(blocks=2, filters=3), channels=1, image_size=8, ways=3, seed=0)
    forward = make_forward(module)
    params = {k: v.double() for k, v in initial_params(module).items()}
    names = list(params)
    chosen = adapted_names(names, head_names(module), "conv2.*,fc.*")
    spec = ALGORITHMS.get(algorithm)
    options = spec.options_model()
    full = spec.meta_parameters(params, chosen, options)
    assert not any(k.startswith("metaopt.conv1.") for k in full)
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=D)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    adapted = adapt(
        cross_entropy(forward), full, x, y, steps=3, lr=ALPHA, adapted=chosen, update=spec.inner_update(options)
    )
    gradient = torch.func.grad(cross_entropy(forward))(params, x, y)
    largest = max(g.norm() for g in gradient.values())
    moving = {name for name in chosen if gradient[name].norm() > 1e-8 * largest}
    assert moving and moving != set(chosen)  # conv2.bias: zero gradient before BatchNorm
    for name in names:
        if name.startswith("conv1."):
            assert torch.equal(adapted[name], params[name])
        elif name in moving:
            assert not torch.equal(adapted[name], params[name])


def test_binary_lr_cross_entropy_is_bce_on_the_sigmoid():
    """output: sigmoid returns (0, z), so cross-entropy is binary cross-entropy on σ(z) (seed 003 §3.2)."""
    module = build_model("linear", LinearParams(output="sigmoid"), channels=1, image_size=3, ways=2, seed=0)
    forward = make_forward(module)
    params = {k: v.double() for k, v in initial_params(module).items()}
    x, y = torch.randn(7, 1, 3, 3, dtype=D), torch.tensor([0, 1, 1, 0, 1, 0, 0])
    z = x.reshape(7, -1) @ params["fc.weight"].T
    torch.testing.assert_close(
        cross_entropy(forward)(params, x, y), F.binary_cross_entropy_with_logits(z[:, 0], y.double())
    )
    with pytest.raises(ConfigError, match=r"binary .* Fix: use output: softmax"):
        build_model("linear", LinearParams(output="sigmoid"), channels=1, image_size=3, ways=5, seed=0)


def test_forward_ignores_the_learned_update_parameters():
    module = build_model("linear", LinearParams(hidden=[4]), channels=1, image_size=2, ways=3, seed=0)
    forward = make_forward(module)
    params = initial_params(module)
    x = torch.randn(2, 1, 2, 2)
    full = _learned("klin", params)
    assert set(full) - set(params) == {f"metaopt.{n}.{f}" for n in params for f in ("L1", "R1")}
    assert torch.equal(forward(full, x), forward(params, x))


def two_layer_cnn_probe():
    """A 2-layer CNN at its initialisation, 4 fixed 3-way tasks and the probe context of a 2-step inner loop."""
    module = build_model("cnn", CNNParams(blocks=2, filters=3), channels=1, image_size=8, ways=3, seed=0)
    forward = make_forward(module)
    params = initial_params(module)
    g = torch.Generator().manual_seed(7)
    y = torch.tensor([[0, 1, 2]] * 4)
    batch = TaskBatch(torch.randn(4, 3, 1, 8, 8, generator=g), y, torch.randn(4, 3, 1, 8, 8, generator=g), y)
    return module, forward, params, batch, ProbeContext(forward, params, batch, 2, ALPHA, 4, 0, head_names(module))


def test_layerwise_probe_adapts_only_or_all_but_each_layer():
    """ "Adapting only" conv2 equals the run's inner loop on conv2.* alone; "freezing only" conv2 equals it
    on conv1.* and fc.*; a layer the model lacks (conv3) is skipped (seed 003 §3.2, Fig. 2)."""
    module, forward, params, batch, context = two_layer_cnn_probe()
    layers = {"conv2": "conv2.*", "conv3": "conv3.*"}
    out = layerwise(context, LayerwiseOptions(layers=layers))
    assert set(out.per_task) == {f"layerwise_{m}_conv2_{k}" for m in ("only", "freeze") for k in ("accuracy", "loss")}
    names = list(params)
    for mode, pattern in (("only", "conv2.*"), ("freeze", "conv1.*,fc.*")):
        chosen = adapted_names(names, head_names(module), pattern)
        metrics, _ = evaluate_tasks(forward, params, batch, steps=2, lr=ALPHA, chunk=4, inner_params=chosen)
        assert torch.equal(out.per_task[f"layerwise_{mode}_conv2_loss"], metrics["query_loss"])


def test_layer_noise_adapts_from_theta_with_noise_of_relative_size_sigma_on_the_fc_layer():
    """Fig. 2's right panel: per σ, the mean over draws of each task's accuracy and loss after adapting conv2 and fc
    (conv1 frozen) from θ with W_fc + σ‖W_fc‖u/‖u‖; σ = 0 is the plain frozen-conv1 adaptation, every draw moves
    the layer by exactly σ‖W‖ and nothing else, and a model without the layer gets no noise columns."""
    from metaland.probes.layerwise import LayerNoiseOptions, noisy
    from metaland.seeding import generator

    _, forward, params, batch, context = two_layer_cnn_probe()
    noise = LayerNoiseOptions(layer="fc.*", frozen="conv1.*", scales=[0.0, 0.5], draws=2)
    out = layerwise(context, LayerwiseOptions(noise=noise))
    assert set(out.per_task) == {f"layerwise_noise_{s}_{k}" for s in ("0", "0.5") for k in ("accuracy", "loss")}
    adapted = [n for n in params if not n.startswith("conv1.")]
    plain, _ = evaluate_tasks(forward, params, batch, steps=2, lr=ALPHA, chunk=4, inner_params=adapted)
    # σ = 0 adapts once (every draw is θ itself): exactly the plain adaptation, not a mean of equal values
    assert torch.equal(out.per_task["layerwise_noise_0_loss"], plain["query_loss"])
    losses = []
    for draw in range(2):
        start = noisy(params, frozenset({"fc.weight", "fc.bias"}), 0.5, generator(0, "layerwise-noise", 1, draw))
        for name, value in start.items():
            moved = (value - params[name]).norm().item()
            assert moved == pytest.approx(0.5 * params[name].norm().item() if name.startswith("fc.") else 0.0)
        metrics, _ = evaluate_tasks(forward, start, batch, steps=2, lr=ALPHA, chunk=4, inner_params=adapted)
        losses.append(metrics["query_loss"])
    torch.testing.assert_close(out.per_task["layerwise_noise_0.5_loss"], (losses[0] + losses[1]) / 2)
    assert not torch.allclose(out.per_task["layerwise_noise_0.5_loss"], plain["query_loss"])
    linear = build_model("linear", LinearParams(hidden=[4]), channels=1, image_size=8, ways=3, seed=0)
    lacks = ProbeContext(make_forward(linear), initial_params(linear), batch, 2, ALPHA, 4, 0, head_names(linear))
    assert layerwise(lacks, LayerwiseOptions(noise=LayerNoiseOptions(layer="conv9.*", scales=[1.0]))).per_task == {}
    with pytest.raises(ValueError, match="≥ 0"):
        LayerNoiseOptions(layer="fc.*", scales=[-1.0])
