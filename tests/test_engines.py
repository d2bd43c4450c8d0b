"""The meta-gradient engines (``train.engine``) against an unrolled float64 autograd loop.

Every engine must compute seed 000's eq. 2.2, (1/n) Σ_i ∇_θ L(f(D'_i; θ̃_i + c_i)), through the
inner loop of eq. 2.1, whatever the layout: ``vmap`` of per-task ``grad``, a loop of it, or the
hybrid plain-autograd path (grouped support passes with BatchNorm per task, per-task query passes,
worker threads). The expected values come from ``tests/reference.py``'s hand-written network and
plain ``torch.autograd.grad`` loops, one task at a time; nothing here calls ``metaland.meta`` to
make its expectation.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from metaland.errors import ConfigError
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.engines import hybrid_query_gradients, resolve_engine
from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.inner import adapt_tasks, cross_entropy
from metaland.meta.regularised import CoherenceRegularisedOptions
from metaland.models import build_model, initial_params, make_forward
from metaland.models.convnet import ConvNetParams
from metaland.models.grouped import (
    channels_last_batch_norm,
    normalised_image_convolution,
    task_batched_forward,
    unfolded_convolution,
)
from metaland.schema import NoOptions
from tests.reference import leaves, make_tasks, reference_adapt, reference_loss, tiny_model

HEAD = ("4.weight", "4.bias")
ENGINES = [("vmap", 0), ("loop", 0), ("hybrid", 0), ("hybrid", 2), ("vmap", 2)]


def reference_meta_gradient(params, batch, *, steps, lr, first_order, adapted=None, offsets=None):
    """(1/n) Σ_i ∇_θ L(f(D'_i; θ̃_i + c_i)), one task at a time, by hand (float64)."""
    theta = leaves(params)
    losses = []
    for i in range(len(batch)):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        if first_order:  # ∂θ̃/∂θ = I: θ̃ = θ + (θ̃ − θ) with the displacement held constant
            moved = reference_adapt(params, sx, sy, steps=steps, lr=lr, adapted=adapted)
            end = {k: theta[k] + (moved[k] - params[k]).detach() for k in theta}
        else:
            end = reference_adapt(theta, sx, sy, steps=steps, lr=lr, create_graph=True, adapted=adapted)
        if offsets is not None:
            end = {k: v + offsets[k][i] for k, v in end.items()}
        losses.append(reference_loss(end, qx, qy))
    grads = torch.autograd.grad(torch.stack(losses).mean(), list(theta.values()))
    return dict(zip(theta, grads, strict=True)), torch.stack(losses).detach()


def engine_problem(forward, module, engine: str, chunk: int, *, steps=3, lr=0.4, adapted=None) -> MetaProblem:
    return MetaProblem(
        forward, cross_entropy(forward), steps, lr, chunk, adapted, None, engine, task_batched_forward(module)
    )


def parameter_sets(module: nn.Module, count: int, g: torch.Generator) -> dict:
    """``count`` float64 parameter sets of ``module`` near its initial ones, {name: [count, ...]}."""
    return {
        k: v.double() + 0.3 * torch.randn(count, *v.shape, generator=g, dtype=torch.float64)
        for k, v in initial_params(module).items()
    }


def assert_rows_are_per_task_forwards(logits, forward, params: dict, x: torch.Tensor, *, rtol: float) -> None:
    """Row i·r + j of grouped logits is the per-task forward of parameter set i·r + j on task i's images."""
    sets_per_task = len(logits) // len(x)
    for row in range(len(logits)):
        expected = forward({k: v[row] for k, v in params.items()}, x[row // sets_per_task])
        assert_close(logits[row], expected, rtol=rtol, atol=1e-12)


def assert_all_close(actual: dict, expected: dict) -> None:
    assert set(actual) == set(expected)
    for name in expected:
        assert_close(actual[name], expected[name], rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("engine,chunk", ENGINES)
@pytest.mark.parametrize("norm", ["batch", "none"])
@pytest.mark.parametrize("first_order", [False, True])
def test_every_engine_computes_the_unrolled_meta_gradient(engine, chunk, norm, first_order):
    """Eqs. 2.1-2.2 through T = 3 inner steps, BatchNorm per task (batch statistics) or none."""
    module, forward, params = tiny_model(norm=norm)
    batch = make_tasks(5)
    expected, losses = reference_meta_gradient(params, batch, steps=3, lr=0.4, first_order=first_order)

    name = "fomaml" if first_order else "maml"
    grads, metrics = ALGORITHMS.get(name).meta_gradient(
        engine_problem(forward, module, engine, chunk), params, batch, NoOptions()
    )
    assert_all_close(grads, expected)
    assert metrics["query_loss"] == pytest.approx(losses.mean().item(), rel=1e-10)


@pytest.mark.parametrize("engine", ["vmap", "loop", "hybrid"])
@pytest.mark.parametrize("inner_params", ["head", "body"])
@pytest.mark.parametrize("first_order", [False, True])
def test_every_engine_adapts_only_the_inner_parameters(engine, inner_params, first_order):
    """ANIL (head only) and BOIL (body only): the frozen part stays at θ inside the loop."""
    module, forward, params = tiny_model()
    subset = frozenset(HEAD) if inner_params == "head" else frozenset(params) - frozenset(HEAD)
    batch = make_tasks(3)
    expected, _ = reference_meta_gradient(params, batch, steps=2, lr=0.4, first_order=first_order, adapted=subset)

    name = "fomaml" if first_order else "maml"
    problem = engine_problem(forward, module, engine, 0, steps=2, adapted=subset)
    grads, _ = ALGORITHMS.get(name).meta_gradient(problem, params, batch, NoOptions())
    assert_all_close(grads, expected)


@pytest.mark.parametrize("engine", ["vmap", "hybrid"])
def test_every_engine_adds_the_regulariser_s_constant_offsets(engine):
    """Algorithm 1 of §2.6: the query gradient at θ̃_i + c_i, c_i constant (no gradient through it)."""
    module, forward, params = tiny_model()
    batch = make_tasks(4)
    options = CoherenceRegularisedOptions(gamma=0.5)
    vmapped, _ = ALGORITHMS.get("regmaml").meta_gradient(
        engine_problem(forward, module, "vmap", 0), params, batch, options
    )
    grads, metrics = ALGORITHMS.get("regmaml").meta_gradient(
        engine_problem(forward, module, engine, 0), params, batch, options
    )
    assert metrics["correction_ratio"] > 0  # the offsets are not zero, so the test can fail
    assert_all_close(grads, vmapped)


def test_worker_threads_split_the_tasks_and_give_the_same_bytes_every_time():
    """With a grouped network the tasks are split among threads: the sum is the unrolled one, and
    the same inputs and worker count give the same bytes on every call."""
    module, forward, params = tiny_model()
    batch = make_tasks(5)
    expected, _ = reference_meta_gradient(params, batch, steps=3, lr=0.4, first_order=False)

    def run(workers: int):
        problem = engine_problem(forward, module, "hybrid", 0)
        grads, losses, _ = hybrid_query_gradients(
            problem, params, batch, first_order=False, offsets=None, workers=workers
        )
        return {k: g / len(batch) for k, g in grads.items()}, losses

    threads = torch.get_num_threads()
    for workers in (1, 2, 3, 8):
        first, losses = run(workers)
        again, _ = run(workers)
        assert_all_close(first, expected)
        assert all(torch.equal(first[k], again[k]) for k in first)
        assert losses.shape == (5,)
        assert torch.get_num_threads() == threads  # the intra-op thread count is restored


@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("sets_per_task", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("downsample,blocks,downsampled", [("stride", 4, None), ("maxpool", 6, 4), ("maxpool", 2, 2)])
def test_the_grouped_network_is_the_per_task_network(
    downsample, blocks, downsampled, grad, channels_last, sets_per_task, tasks
):
    """One grouped pass over n tasks with their own weights = n per-task forward passes (BatchNorm
    over each task's own images), for the ConvNet's stride and max-pool forms (seed 000 §2.7.1,
    seed 001's Conv6); in either memory layout; with r parameter sets sharing each task's images
    (row i·r + j is task i); and without autograd (where ReLU works in place) without touching the
    caller's images."""
    options = ConvNetParams(blocks=blocks, filters=3, downsample=downsample, downsampled_blocks=downsampled)
    module = build_model("convnet", options, channels=3, image_size=20, ways=4, seed=0).double()
    forward, grouped = make_forward(module), task_batched_forward(module)
    g = torch.Generator().manual_seed(0)
    sets = tasks * sets_per_task
    params = parameter_sets(module, sets, g)
    x = torch.randn(tasks, 6, 3, 20, 20, generator=g, dtype=torch.float64)
    images = x.clone()
    with torch.set_grad_enabled(grad):
        logits = grouped(params, x, channels_last=channels_last)
    assert logits.shape == (sets, 6, 4)
    assert torch.equal(x, images)
    assert_rows_are_per_task_forwards(logits, forward, params, x, rtol=1e-12)


@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("sets_per_task", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (2, 3, 0, 1), (3, 1, 2, 2)])
def test_the_first_convolution_as_a_matrix_product_is_the_grouped_convolution(
    kernel, stride, padding, dilation, bias, sets_per_task, tasks
):
    """The image convolution as patches × weights equals PyTorch's grouped convolution (one group per
    task, r parameter sets each), with and without a bias, for strides, paddings and dilations; for one
    task its output comes out channels last (the layout the next convolution runs fastest in)."""
    layer = nn.Conv2d(2, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    g = torch.Generator().manual_seed(2)
    images = 5
    weight = torch.randn(tasks * sets_per_task, 4, 2, kernel, kernel, generator=g, dtype=torch.float64)
    biases = torch.randn(tasks * sets_per_task, 4, generator=g, dtype=torch.float64) if bias else None
    x = torch.randn(images, tasks * 2, 9, 11, generator=g, dtype=torch.float64)
    expected = reference_grouped_convolution(x, weight, biases, layer, tasks)
    actual = unfolded_convolution(x, weight, biases, layer, tasks)
    assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    assert actual.is_contiguous(memory_format=torch.channels_last if tasks == 1 else torch.contiguous_format)


def reference_grouped_convolution(x, weight, biases, layer: nn.Conv2d, tasks: int) -> torch.Tensor:
    """PyTorch's grouped convolution with ``layer``'s stride, padding and dilation, one group per task
    (weights [n·r, O, C, k, k], biases [n·r, O] or None)."""
    return F.conv2d(
        x,
        weight.reshape(-1, *weight.shape[2:]),
        None if biases is None else biases.reshape(-1),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=tasks,
    )


def folded_and_unfolded_batch_norm(
    kernel: int,
    stride: int,
    padding: int,
    dilation: int,
    *,
    tasks: int,
    sets_per_task: int,
    affine: bool,
    bias: bool,
    g,
) -> tuple:
    """Float64 inputs of the first convolution of n tasks with r parameter sets each (weights, conv
    biases, γ, β: leaves that require grad; images [5, n·2, 9, 11]), and a function of the layout that
    gives (F.batch_norm of F.conv2d, normalised_image_convolution) of them."""
    layer = nn.Conv2d(2, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias)
    sets = tasks * sets_per_task
    weight = torch.randn(sets, 4, 2, kernel, kernel, generator=g, dtype=torch.float64)
    biases = torch.randn(sets, 4, generator=g, dtype=torch.float64) if bias else None
    gamma, beta = (torch.rand(sets, 4, generator=g, dtype=torch.float64) + 0.5 for _ in range(2))
    leaves = [t.requires_grad_() for t in (weight, biases, *((gamma, beta) if affine else ())) if t is not None]
    x = torch.rand(5, tasks * 2, 9, 11, generator=g, dtype=torch.float64)

    def outputs(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        y = reference_grouped_convolution(images, weight, biases, layer, tasks)
        affinity = (gamma.reshape(-1), beta.reshape(-1)) if affine else (None, None)
        expected = F.batch_norm(y, None, None, *affinity, training=True, eps=1e-5)
        affinity = (gamma, beta) if affine else (None, None)
        return expected, normalised_image_convolution(
            images, weight, biases, *affinity, layer, 1e-5, tasks, channels_last
        )

    return leaves, outputs


@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sets_per_task", [1, 3])
@pytest.mark.parametrize("affine,bias", [(True, True), (False, False)])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 2, 1, 1), (2, 3, 0, 1), (3, 1, 2, 2)])
def test_batch_norm_folded_into_the_image_convolution_is_batch_norm_of_it(
    kernel, stride, padding, dilation, affine, bias, sets_per_task, channels_last, tasks
):
    """BatchNorm (batch statistics) of the first convolution, folded into one convolution from the
    patches' mean and covariance, equals F.batch_norm of F.conv2d (one group per task, r parameter
    sets each) in float64, in both layouts, with and without γ, β and the conv bias (which cancels)."""
    g = torch.Generator().manual_seed(3)
    _, outputs = folded_and_unfolded_batch_norm(
        kernel, stride, padding, dilation, tasks=tasks, sets_per_task=sets_per_task, affine=affine, bias=bias, g=g
    )
    with torch.no_grad():
        expected, folded = outputs(channels_last)
    assert_close(folded, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("upstream_layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("sets_per_task", [1, 3])
@pytest.mark.parametrize("affine,bias", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 2, 1, 1), (2, 3, 0, 1), (3, 1, 2, 2)])
def test_the_folded_batch_norm_has_the_first_and_second_derivatives_of_batch_norm(
    kernel, stride, padding, dilation, affine, bias, sets_per_task, tasks, upstream_layout
):
    """Under autograd (default layout) the fold's hand-derived gradients of the conv weights, γ and β
    equal autograd's through F.batch_norm of F.conv2d, the conv bias's is zero, and so are the
    derivatives of a gradient (the second order of MAML's inner loop), in float64, for upstream gradients
    in either layout (for one task the output is channels last, and so is the next convolution's gradient)."""
    g = torch.Generator().manual_seed(5)
    leaves, outputs = folded_and_unfolded_batch_norm(
        kernel, stride, padding, dilation, tasks=tasks, sets_per_task=sets_per_task, affine=affine, bias=bias, g=g
    )
    expected, folded = outputs(channels_last=False)
    upstream = torch.randn(expected.shape, generator=g, dtype=torch.float64).contiguous(memory_format=upstream_layout)
    probe = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in leaves]
    for output in (expected, folded):
        grads = torch.autograd.grad(output, leaves, upstream, create_graph=True)
        directional = sum((d * v).sum() for d, v in zip(grads, probe, strict=True))
        second = torch.autograd.grad(directional, leaves, allow_unused=True, materialize_grads=True)
        if output is expected:
            expected_grads, expected_second = grads, second
    for actual, wanted in zip([*grads, *second], [*expected_grads, *expected_second], strict=True):
        assert_close(actual, wanted, rtol=1e-9, atol=1e-11)


def test_batch_norm_folded_into_the_image_convolution_keeps_float32_accurate():
    """In float32 the folded BatchNorm stays as close to float64 as BatchNorm after the convolution
    does, on smooth images (neighbouring pixels nearly equal) and a filter that nearly cancels them,
    where a variance wᵀΣw taken in float32 would lose digits: within 1e-5 in both layouts (measured:
    1.4e-6 and 2.1e-6; F.batch_norm after F.conv2d 2.2e-6 and 9.0e-6). Its gradients of the conv
    weights, γ and β, for an upstream gradient that follows the output, are within 1e-4, 1e-6 and
    1e-6 of float64, relative to their largest entry (measured: 3.1e-5, 4.3e-8 and 1.6e-7; autograd
    through F.batch_norm after F.conv2d in float32: 3.7e-4 for the weights)."""
    layer, tasks = nn.Conv2d(1, 4, 3, stride=2, padding=1), 2
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(75 * tasks, 1, 40, 40, generator=g, dtype=torch.float64)
    x = F.avg_pool2d(noise, 7, stride=1)[:, :, :28, :28].reshape(75, tasks, 28, 28)
    x = (x - x.min()) / (x.max() - x.min())
    weight = torch.randn(tasks, 4, 1, 3, 3, generator=g, dtype=torch.float64)
    weight[:, 0] = torch.tensor([[0, 0, 0], [0, 1, -1], [0, 0, 0]], dtype=torch.float64) + 1e-3 * weight[:, 0]
    gamma = (torch.rand(tasks, 4, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(tasks, 4, generator=g, dtype=torch.float64).requires_grad_()
    weight.requires_grad_()
    y = F.conv2d(x, weight.reshape(-1, 1, 3, 3), stride=2, padding=1, groups=tasks)
    truth = F.batch_norm(y, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=1e-5)
    upstream = (3 * truth.detach() + torch.randn(truth.shape, generator=g, dtype=torch.float64)) * 1e-2
    true_grads = torch.autograd.grad((truth * upstream).sum(), [weight, gamma, beta])
    for channels_last in (False, True):
        images = x.float().contiguous(memory_format=torch.channels_last) if channels_last else x.float()
        with torch.no_grad():
            folded = normalised_image_convolution(
                images, weight.float(), None, gamma.float(), beta.float(), layer, 1e-5, tasks, channels_last
            )
        assert (folded.double() - truth).abs().max().item() < 1e-5
    leaves = [t.detach().float().requires_grad_() for t in (weight, gamma, beta)]
    folded = normalised_image_convolution(x.float(), leaves[0], None, *leaves[1:], layer, 1e-5, tasks, False)
    grads = torch.autograd.grad((folded * upstream.float()).sum(), leaves)
    errors = [((a.double() - t).abs().max() / t.abs().max()).item() for a, t in zip(grads, true_grads, strict=True)]
    assert errors[0] < 1e-4 and errors[1] < 1e-6 and errors[2] < 1e-6, errors


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_grouped_forward_folds_the_first_batch_norm_into_the_same_numbers(channels_last, monkeypatch):
    """The grouped ConvNet folds its first BatchNorm into the image convolution (one BatchNorm pass
    fewer): in the default layout with and without autograd, channels last without autograd only.
    Its logits are those of the per-task forward either way, for r parameter sets per task."""
    import metaland.models.grouped as grouped_module

    passes = []
    for name in ("batch_norm", "channels_last_batch_norm"):
        kernel = getattr(grouped_module, name)
        monkeypatch.setattr(grouped_module, name, lambda *a, kernel=kernel: passes.append(1) or kernel(*a))
    module = build_model(
        "convnet",
        ConvNetParams(blocks=2, filters=4, downsample="stride", norm="batch"),
        channels=1,
        image_size=12,
        ways=3,
        seed=0,
    ).double()
    forward, grouped = make_forward(module), task_batched_forward(module)
    g = torch.Generator().manual_seed(4)
    params = parameter_sets(module, 4, g)
    x = torch.rand(2, 6, 1, 12, 12, generator=g, dtype=torch.float64)
    with torch.no_grad():
        folded = grouped(params, x, channels_last=channels_last)
    assert len(passes) == 1  # of two blocks' BatchNorms, the second
    with_autograd = grouped(params, x, channels_last=channels_last)
    assert len(passes) == (3 if channels_last else 2)
    for logits in (folded, with_autograd):
        assert_rows_are_per_task_forwards(logits, forward, params, x, rtol=1e-10)


@pytest.mark.parametrize("grad", [True, False])
def test_one_tasks_second_convolution_runs_channels_last_and_batch_norm_gets_the_default_layout(grad, monkeypatch):
    """For one task (the meta-iteration's query passes) the image convolution's output is channels last, so
    the convolution after it runs oneDNN's channels-last kernels; every BatchNorm still gets a contiguous
    activation (PyTorch's channels-last BatchNorm kernel loses float32 digits, docs/performance.md)."""
    import metaland.models.grouped as grouped_module

    layouts = {"convolution inputs": [], "batch norm inputs": []}
    convolve, normalise = grouped_module.grouped_convolution, grouped_module.batch_norm

    def recorded(kind: str, kernel):
        def call(h, *args):
            layouts[kind].append(h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous())
            return kernel(h, *args)

        return call

    monkeypatch.setattr(grouped_module, "grouped_convolution", recorded("convolution inputs", convolve))
    monkeypatch.setattr(grouped_module, "batch_norm", recorded("batch norm inputs", normalise))
    module = build_model("convnet", ConvNetParams(blocks=3, filters=4), channels=1, image_size=12, ways=3, seed=0)
    forward, grouped = make_forward(module.double()), task_batched_forward(module)
    g = torch.Generator().manual_seed(6)
    params = parameter_sets(module, 1, g)
    x = torch.rand(1, 6, 1, 12, 12, generator=g, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        logits = grouped(params, x)
    assert layouts == {"convolution inputs": [True, False], "batch norm inputs": [False, False]}
    assert_rows_are_per_task_forwards(logits, forward, params, x, rtol=1e-10)


@pytest.mark.parametrize("channels_last", [False, True])
def test_image_statistics_taken_once_give_the_same_bytes_and_refuse_other_images(channels_last):
    """The folded first BatchNorm's statistics of the images, taken once (``for_images``, as a loss surface
    does for all its chunks and an inner loop for all its steps), give the logits and gradients of taking
    them in every call, to the byte; statistics of other images, even equal ones, are refused."""
    options = ConvNetParams(blocks=2, filters=4)
    module = build_model("convnet", options, channels=1, image_size=12, ways=3, seed=0).double()
    grouped = task_batched_forward(module)
    g = torch.Generator().manual_seed(7)
    params = {k: v.requires_grad_() for k, v in parameter_sets(module, 4, g).items()}
    x = torch.rand(2, 6, 1, 12, 12, generator=g, dtype=torch.float64)
    once = grouped.for_images(x)
    with torch.no_grad():
        assert torch.equal(
            once(params, x, channels_last=channels_last), grouped(params, x, channels_last=channels_last)
        )
    if not channels_last:  # the layout of passes under autograd
        for a, b in zip(
            torch.autograd.grad(once(params, x).square().sum(), list(params.values())),
            torch.autograd.grad(grouped(params, x).square().sum(), list(params.values())),
            strict=True,
        ):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="taken of other images"):
        once(params, x.clone(), channels_last=channels_last)


@pytest.mark.parametrize("grad", [True, False])
def test_channels_last_batch_norm_keeps_float32_statistics_accurate(grad):
    """The two-pass statistics stay close to float64 BatchNorm for activations whose mean is large
    against their spread (after a convolution's bias), where one-pass sums lose digits: within 1e-4
    at a mean of 30 and a spread of 0.5 (measured: 9e-6; PyTorch's kernels 8e-6 in the default layout,
    2e-4 channels last)."""
    g = torch.Generator().manual_seed(0)
    exact = (30 + 0.5 * torch.randn(75, 64, 14, 14, generator=g, dtype=torch.float64)).contiguous(
        memory_format=torch.channels_last
    )
    weight, bias = (
        torch.rand(64, generator=g, dtype=torch.float64) + 0.5,
        torch.randn(64, generator=g, dtype=torch.float64),
    )
    truth = F.batch_norm(exact, None, None, weight, bias, training=True, eps=1e-5)
    with torch.set_grad_enabled(grad):
        normalised = channels_last_batch_norm(exact.float(), weight.float(), bias.float(), 1e-5)
    assert normalised.is_contiguous(memory_format=torch.channels_last)
    assert (normalised.double() - truth).abs().max().item() < 1e-4
    assert_close(channels_last_batch_norm(exact, weight, bias, 1e-5), truth, rtol=1e-12, atol=1e-12)
    assert_close(
        channels_last_batch_norm(exact, None, None, 1e-5), F.batch_norm(exact, None, None, training=True, eps=1e-5)
    )


def test_shared_images_reach_a_network_that_does_not_start_with_a_convolution():
    """Without a first convolution to share them, each task's images are repeated for its parameter
    sets; parameter sets that do not divide among the tasks are refused."""
    module = nn.Sequential(
        nn.BatchNorm2d(2, track_running_stats=False), nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)
    ).double()
    forward, grouped = make_forward(module), task_batched_forward(module)
    g = torch.Generator().manual_seed(1)
    params = parameter_sets(module, 4, g)
    x = torch.randn(2, 5, 2, 4, 4, generator=g, dtype=torch.float64)
    assert_rows_are_per_task_forwards(grouped(params, x), forward, params, x, rtol=1e-12)
    with pytest.raises(ValueError, match="4 parameter sets cannot share the images of 3 tasks evenly"):
        grouped(params, torch.randn(3, 5, 2, 4, 4, dtype=torch.float64))


def test_models_of_other_shapes_have_no_grouped_network_and_hybrid_falls_back_to_vmap():
    """A ResNet has no grouped form: the hybrid engine then runs its support passes under ``vmap``
    in one thread, and still computes eq. 2.2."""
    from metaland.models.resnet import ResNetParams

    resnet = build_model("resnet", ResNetParams(depth=10, width=2), channels=3, image_size=8, ways=3, seed=0)
    assert task_batched_forward(resnet) is None

    _, forward, params = tiny_model()
    batch = make_tasks(3)
    expected, _ = reference_meta_gradient(params, batch, steps=2, lr=0.4, first_order=False)
    problem = MetaProblem(forward, cross_entropy(forward), 2, 0.4, 0, None, None, "hybrid", None)
    grads, _ = ALGORITHMS.get("maml").meta_gradient(problem, params, batch, NoOptions())
    assert_all_close(grads, expected)


def test_auto_is_a_fixed_rule_and_hybrid_refuses_a_learned_update():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve_engine("auto", device=cpu, update=None) == "hybrid"
    assert resolve_engine("auto", device=gpu, update=None) == "vmap"
    learned = ALGORITHMS.get("metasgd").inner_update(ALGORITHMS.get("metasgd").options_model())
    assert learned is not None
    assert resolve_engine("auto", device=cpu, update=learned) == "vmap"
    assert resolve_engine("loop", device=cpu, update=learned) == "loop"
    with pytest.raises(ConfigError, match=r"learns its inner update.*Fix: set train.engine to auto, vmap or loop"):
        resolve_engine("hybrid", device=cpu, update=learned)


@pytest.mark.parametrize("chunk", [0, 2])
@pytest.mark.parametrize("inner_params", ["all", "head"])
def test_grouped_adaptation_is_the_inner_loop_of_every_task(chunk, inner_params):
    """Validation and probes adapt every task (eq. 2.1, no graph to θ); under the hybrid engine as
    one grouped network per chunk: the same θ̃_i as the hand-written loop, task by task."""
    module, forward, params = tiny_model()
    subset = None if inner_params == "all" else frozenset(HEAD)
    batch = make_tasks(5)
    grouped = adapt_tasks(
        cross_entropy(forward),
        params,
        batch.support_x,
        batch.support_y,
        steps=3,
        lr=0.4,
        chunk=chunk,
        adapted=subset,
        batched_forward=task_batched_forward(module),
    )
    for i in range(5):
        expected = reference_adapt(params, batch.support_x[i], batch.support_y[i], steps=3, lr=0.4, adapted=subset)
        assert_all_close({k: v[i] for k, v in grouped.items()}, expected)
    assert all(v.grad_fn is None for v in grouped.values())


def test_validation_metrics_are_the_same_under_the_grouped_adaptation():
    module, forward, params = tiny_model()
    batch = make_tasks(4)
    common = {"steps": 3, "lr": 0.4, "chunk": 0}
    vmapped, _ = evaluate_tasks(forward, params, batch, **common)
    grouped, _ = evaluate_tasks(forward, params, batch, batched_forward=task_batched_forward(module), **common)
    assert set(grouped) == set(vmapped)
    for name in vmapped:
        assert_close(grouped[name], vmapped[name], rtol=1e-10, atol=1e-12)
