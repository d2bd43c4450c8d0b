"""metaland against the implementations researchers would otherwise use, timed side by side.

One process, one run, identical inputs; each row times metaland and a reference in interleaved
rounds (so drift of the machine hits both alike), reports the medians and their ratio, and checks
that both sides compute the same numbers. Rows:

1. one meta-iteration (meta-gradient), Conv4-64, Omniglot-shaped 28×28, 5-way 1-shot, 15 queries,
   meta-batch 16, T = 5, second and first order: metaland (``vmap`` of per-task ``grad``) against
   ``higher`` (differentiable inner loop over a monkey-patched module, one task at a time) and a
   plain per-task ``torch.autograd.grad(create_graph=True)`` loop;
2. the spectral norm of the support-loss Hessian at adapted solutions: metaland (the curvature
   probe's certified Lanczos on forward-over-reverse HVPs, vectorised over tasks) against a
   PyHessian-style power iteration on double-backward HVPs, one task at a time, same start vectors,
   at certified equal accuracy (each with the loosest stopping tolerance that brings every task
   within 1e-4 of ARPACK's ``eigsh``, the tests' oracle in ``tests/reference.py``);
3. 2-D loss surfaces (21×21 and 51×51) with inner steps from every perturbed point: metaland
   (``vmap`` over grid points and tasks, or the grouped network) against a per-point Python loop,
   each side's float32 surface checked against the loop's in float64;
4. a whole checkpoint probe (every guiroy2019 probe on 60 tasks): vectorised over tasks against the
   same probes one task at a time;
5. the fixed cost of a stage process (start, import PyTorch and use ``torch.func.grad`` once, open
   an MLflow run, log a metric, close it, exit): metaland's stages (tracking sidecar started first,
   no interpreter teardown) against the same calls made in the process, one after the other.

Usage: ``python benchmarks/run.py`` (``--quick`` for a smaller smoke run, ``--device cuda`` on a GPU).
Needs the ``bench`` extra (``pip install -e .[bench]``: ``higher``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import click
import psutil
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metaland.data.tasks import TaskBatch
from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.engines import resolve_engine
from metaland.meta.inner import adapt_tasks, cross_entropy
from metaland.models import build_model, head_names, initial_params, make_forward
from metaland.models.convnet import ConvNetParams
from metaland.models.grouped import task_batched_forward
from metaland.probes import PROBES, ProbeContext
from metaland.probes.hessian import CurvatureOptions, lanczos_starts, tasks_extreme_eigenvalues
from metaland.probes.surface import SurfaceOptions, SurfaceSpec, filter_normalised_direction, loss_surface
from metaland.runtime import tune_allocator
from metaland.schema import NoOptions
from metaland.seeding import generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the ARPACK oracle is the tests' own
from tests.reference import autograd_hessian_operator, eigsh_extremes

OTHERS_LIMIT = 0.05
"""A round is redone when other processes (or the hypervisor: steal time) took more than this share
of the machine's CPU time while it ran; after ``RETRIES`` redos it is kept and the row is flagged."""
RETRIES = 3


@dataclass
class Row:
    name: str
    ours: list[float]
    reference: list[float]
    reference_name: str
    agreement: str
    goal: float | None = None
    others: list[float] = field(default_factory=list)  # others' CPU share during each kept round

    @property
    def ratio(self) -> float:
        return statistics.median(self.reference) / statistics.median(self.ours)

    @property
    def ratio_spread(self) -> tuple[float, float]:
        """Lowest and highest ratio of a single round (reference / metaland, round by round)."""
        ratios = [r / o for r, o in zip(self.reference, self.ours, strict=True)]
        return min(ratios), max(ratios)

    @property
    def idle(self) -> bool:
        return all(share <= OTHERS_LIMIT for share in self.others)


def cpu_seconds() -> tuple[float, float]:
    """(seconds every CPU of the machine was busy or stolen, seconds this process and its waited-for
    children ran), from /proc/stat and /proc/self through psutil."""
    machine = psutil.cpu_times()
    busy = sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system + own.children_user + own.children_system


def others_share(run: Callable[[], None]) -> float:
    """Share of the machine's CPU time that other processes took while ``run()`` ran."""
    busy, own = cpu_seconds()
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    busy_after, own_after = cpu_seconds()
    return max(0.0, (busy_after - busy) - (own_after - own)) / (wall * psutil.cpu_count())


def timed_rounds(functions: dict[str, Callable[[], object]], rounds: int, device: torch.device) -> dict:
    """Wall times of each function, interleaved round by round, after one warm-up; a round in which
    other processes took more than ``OTHERS_LIMIT`` of the CPU is redone (up to ``RETRIES`` times)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    outputs = {name: fn() for name, fn in functions.items()}  # warm-up, and the outputs to compare
    others: list[float] = []
    this_round: dict[str, float] = {}

    def run_round() -> None:
        for name, fn in functions.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            this_round[name] = time.perf_counter() - start

    for _ in range(rounds):
        for _attempt in range(RETRIES + 1):
            share = others_share(run_round)
            if share <= OTHERS_LIMIT:
                break
            click.echo(f"  (a round was contended: other processes took {share:.0%} of the CPU; redoing it)", err=True)
        for name, seconds in this_round.items():
            times[name].append(seconds)
        others.append(share)
    return {"times": times, "outputs": outputs, "others": others}


def median_seconds(function: Callable[[], object], rounds: int, device: torch.device) -> float:
    return statistics.median(timed_rounds({"t": function}, rounds, device)["times"]["t"])


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference relative to the largest magnitude, over all tensors."""
    scale = max(v.abs().max().item() for v in a.values())
    return max((a[k] - b[k]).abs().max().item() for k in a) / scale


def convnet(filters: int, size: int, device: torch.device, ways: int = 5):
    module = build_model(
        "convnet",
        ConvNetParams(blocks=4, filters=filters, downsample="stride", norm="batch"),
        channels=1,
        image_size=size,
        ways=ways,
        seed=0,
    ).to(device)
    params = {k: v.to(device) for k, v in initial_params(module).items()}
    return module, params


def omniglot_like_tasks(
    n: int, size: int, queries: int, device: torch.device, ways: int = 5, seed: int = 0
) -> TaskBatch:
    """Tasks whose classes are noisy prototypes (learnable, so gradients and curvature are typical)."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(n, ways, 1, size, size, generator=g)

    def draw(per_class: int):
        labels = torch.arange(ways).repeat_interleave(per_class)
        noise = torch.rand(n, len(labels), 1, size, size, generator=g) * 0.3
        return (prototypes[:, labels] + noise).clamp(0, 1), labels.expand(n, -1).contiguous()

    return TaskBatch(*draw(1), *draw(queries)).to(device)


# --------------------------------------------------------------------------------------------
# Row 1: meta-iteration
# --------------------------------------------------------------------------------------------


def higher_meta_gradient(module, params, batch: TaskBatch, steps: int, lr: float, first_order: bool):
    """The mean meta-gradient with ``higher``: per task, a differentiable SGD inner loop."""
    import higher

    for name, p in module.named_parameters():
        p.data.copy_(params[name])
        p.grad = None
    inner = torch.optim.SGD(module.parameters(), lr=lr)
    n = len(batch)
    for i in range(n):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        with higher.innerloop_ctx(module, inner, copy_initial_weights=False, track_higher_grads=not first_order) as (
            fmodel,
            diffopt,
        ):
            for _ in range(steps):
                diffopt.step(F.cross_entropy(fmodel(sx), sy))
            query_loss = F.cross_entropy(fmodel(qx), qy) / n
            if first_order:  # gradient at the adapted weights, applied to θ
                grads = torch.autograd.grad(query_loss, fmodel.parameters())
                for p, g in zip(module.parameters(), grads, strict=True):
                    p.grad = g if p.grad is None else p.grad + g
            else:
                query_loss.backward()
    return {name: p.grad.detach().clone() for name, p in module.named_parameters()}


def loop_meta_gradient(module, params, batch: TaskBatch, steps: int, lr: float, first_order: bool):
    """The mean meta-gradient with a plain per-task ``torch.autograd.grad(create_graph=True)`` loop."""
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in theta.items()}
    n = len(batch)
    for i in range(n):
        sx, sy, qx, qy = (t[i] for t in batch.tensors())
        fast = dict(theta)
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(module, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads, strict=True)}
        query_loss = F.cross_entropy(functional_call(module, fast, (qx,)), qy) / n
        wrt = list(fast.values()) if first_order else list(theta.values())
        for k, g in zip(theta, torch.autograd.grad(query_loss, wrt), strict=True):
            total[k] += g
    return total


ENGINES = {"metaland": "auto", "metaland-vmap": "vmap", "metaland-loop": "loop", "metaland-hybrid": "hybrid"}


def meta_gradients(filters: int, meta_batch: int, steps: int, first_order: bool, device, dtype=torch.float32):
    """Every implementation of one meta-gradient, as thunks over the same model and tasks: metaland
    with each engine (``auto`` as a run on ``device`` resolves it), ``higher`` and a plain loop."""
    module, params = convnet(filters, 28, device)
    module = module.to(dtype)
    params = {k: v.to(dtype) for k, v in params.items()}
    forward = make_forward(module)
    tasks = omniglot_like_tasks(meta_batch, 28, 15, device)
    batch = TaskBatch(tasks.support_x.to(dtype), tasks.support_y, tasks.query_x.to(dtype), tasks.query_y)
    lr = 0.4
    algorithm = ALGORITHMS.get("fomaml" if first_order else "maml")

    def metaland(engine: str):
        resolved = resolve_engine(engine, device=device, update=None)
        problem = MetaProblem(
            forward, cross_entropy(forward), steps, lr, 0, engine=resolved, batched_forward=task_batched_forward(module)
        )
        return lambda: algorithm.meta_gradient(problem, params, batch, NoOptions())[0]

    references = {"loop": lambda: loop_meta_gradient(module, params, batch, steps, lr, first_order)}
    if importlib.util.find_spec("higher") is not None:  # the `bench` extra; a GPU machine may lack it
        references["higher"] = lambda: higher_meta_gradient(module, params, batch, steps, lr, first_order)
    return {**{name: metaland(engine) for name, engine in ENGINES.items()}, **references}


def row_meta_iteration(
    device, rounds: int, *, filters: int, meta_batch: int, steps: int, first_order: bool
) -> list[Row]:
    """Timed in float32; agreement in float32 on the timed tasks and in float64 on the first four
    (float32 rounding grows through T steps of an ill-conditioned task; float64 shows the maths agree)."""
    implementations = meta_gradients(filters, meta_batch, steps, first_order, device)
    if "higher" not in implementations:
        click.echo("  (`higher` is not installed, `pip install -e .[bench]`: timed against the plain loop)", err=True)
    result = timed_rounds(implementations, rounds, device)
    exact = {name: fn() for name, fn in meta_gradients(filters, 4, steps, first_order, device, torch.float64).items()}
    times = result["times"]
    order = "first" if first_order else "second"
    what = f"meta-iteration, {order} order (Conv4-{filters}, meta-batch {meta_batch}, T = {steps})"
    auto = resolve_engine("auto", device=device, update=None)
    main = "higher" if "higher" in implementations else "loop"
    pairs = [("metaland", "higher"), ("metaland", "loop")] if main == "higher" else [("metaland", "loop")]
    pairs += [(f"metaland-{engine}", main) for engine in ("vmap", "hybrid", "loop") if engine != auto]
    return [
        Row(
            f"{what}, engine " + (f"{auto} (auto)" if mine == "metaland" else ENGINES[mine]),
            times[mine],
            times[ref],
            ref,
            f"max rel. diff {max_difference(result['outputs'][mine], result['outputs'][ref]):.1e} (float32), "
            f"{max_difference(exact[mine], exact[ref]):.1e} (float64)",
            2.0 if (mine, ref) == ("metaland", main) else None,
            result["others"],
        )
        for mine, ref in pairs
    ]


# --------------------------------------------------------------------------------------------
# Row 2: top Hessian eigenvalue
# --------------------------------------------------------------------------------------------


def pyhessian_top_eigenvalue(
    loss_fn, params: dict, x, y, *, max_iters: int, tol: float, start: dict
) -> tuple[float, int]:
    """PyHessian's power iteration (Yao et al. 2020): Hv by double backward, one task, relative tol.
    Returns the eigenvalue of largest magnitude (|it| = ‖H‖_σ) and the Hessian-vector products taken."""
    theta = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    grads = torch.autograd.grad(loss_fn(theta, x, y), list(theta.values()), create_graph=True)
    v = [s.clone() for s in start.values()]
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    v = [t / norm for t in v]
    eigenvalue = None
    for products in range(1, max_iters + 1):
        hv = torch.autograd.grad(grads, list(theta.values()), grad_outputs=v, retain_graph=True)
        estimate = sum((a * b).sum() for a, b in zip(hv, v, strict=True)).item()
        norm = torch.sqrt(sum((t * t).sum() for t in hv))
        v = [t / norm for t in hv]
        if eigenvalue is not None and abs(estimate - eigenvalue) <= tol * abs(estimate):
            return estimate, products
        eigenvalue = estimate
    return eigenvalue, max_iters


def eigsh_spectral_norms(loss_fn, params: dict, x, y) -> torch.Tensor:
    """‖H_i‖_σ of every task (leading axis) by ARPACK's ``eigsh`` on float64 double-backward
    Hessian-vector products: the oracle of the tests (``tests/reference.py``)."""
    values = []
    for i in range(x.shape[0]):
        operator = autograd_hessian_operator(loss_fn, {k: v[i] for k, v in params.items()}, x[i], y[i])
        values.append(max(abs(end) for end in eigsh_extremes(operator, tol=1e-10)))
    return torch.tensor(values, dtype=torch.float64)


TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7)


def loosest_tolerance(solve: Callable[[float], torch.Tensor], truth: torch.Tensor, target: float) -> float:
    """The loosest stopping tolerance at which ``solve(tol)`` is within ``target`` (relative) of ``truth``."""
    for tol in TOLERANCES:
        if ((solve(tol) - truth).abs() / truth.abs()).max().item() <= target:
            return tol
    raise RuntimeError(f"no tolerance in {TOLERANCES} reaches a relative error of {target:g}")


def row_hessian(device, rounds: int, *, filters: int, tasks: int, target: float) -> list[Row]:
    """‖H‖_σ at adapted solutions, both methods at certified equal accuracy: each runs with the
    loosest tolerance whose spectral norms all lie within ``target`` (relative) of ARPACK's, from the
    same start vectors. metaland runs its probe's certified Lanczos (both ends, residual rule, the
    probe's default minimum Krylov dimension); power iteration's |λ| is the spectral norm."""
    module, params = convnet(filters, 28, device)
    forward = make_forward(module)
    loss = cross_entropy(forward)
    batch = omniglot_like_tasks(tasks, 28, 15, device)
    adapted = adapt_tasks(loss, params, batch.support_x, batch.support_y, steps=5, lr=0.4, chunk=tasks)
    start = lanczos_starts(params, tasks, seed=0)
    settings = CurvatureOptions().model_dump(include={"max_iters", "min_iters", "krylov_dim"})  # the probe's
    products = {}

    def ours(tol: float) -> torch.Tensor:
        x, y = batch.support_x, batch.support_y
        ends = tasks_extreme_eigenvalues(loss, adapted, x, y, start=start, chunk=tasks, tol=tol, **settings)
        products["metaland"] = int(ends.iterations.sum())
        return ends.spectral_norm.cpu()

    def reference(tol: float) -> torch.Tensor:
        runs = [
            pyhessian_top_eigenvalue(
                loss,
                {k: v[i] for k, v in adapted.items()},
                batch.support_x[i],
                batch.support_y[i],
                max_iters=2000,
                tol=tol,
                start={k: v[i] for k, v in start.items()},
            )
            for i in range(tasks)
        ]
        products["power"] = sum(n for _, n in runs)
        return torch.tensor([abs(value) for value, _ in runs], dtype=torch.float64)

    truth = eigsh_spectral_norms(loss, adapted, batch.support_x, batch.support_y)
    our_tol, reference_tol = loosest_tolerance(ours, truth, target), loosest_tolerance(reference, truth, target)
    result = timed_rounds(
        {"metaland": partial(ours, our_tol), "pyhessian": partial(reference, reference_tol)}, rounds, device
    )

    def error(values: torch.Tensor) -> float:
        return ((values - truth).abs() / truth.abs()).max().item()

    a, b = result["outputs"]["metaland"], result["outputs"]["pyhessian"]
    agreement = (
        f"max rel. error vs eigsh: {error(a):.1e} (Lanczos, residual tol {our_tol:g}, {products['metaland']} "
        f"products) vs {error(b):.1e} (power iteration, tol {reference_tol:g}, {products['power']} products)"
    )
    what = f"spectral norm ‖H‖σ at θ̃ᵢ (Conv4-{filters}, {tasks} tasks, rel. error vs eigsh ≤ {target:g})"
    t = result["times"]
    return [Row(what, t["metaland"], t["pyhessian"], "PyHessian-style", agreement, 2.0, result["others"])]


# --------------------------------------------------------------------------------------------
# Row 3: 2-D surfaces
# --------------------------------------------------------------------------------------------


def per_point_surface(module, params, batch: TaskBatch, delta, eta, coords, steps: int, lr: float) -> torch.Tensor:
    """The loss-landscape tools' way: for every grid point, set the weights, adapt every task with
    ``torch.autograd.grad`` and average the query loss."""
    n = len(coords)
    values = torch.empty(n, n, dtype=torch.float64)
    for i, a in enumerate(coords.tolist()):
        for j, b in enumerate(coords.tolist()):
            start = {k: params[k] + a * delta[k] + b * eta[k] for k in params}
            total = 0.0
            for t in range(len(batch)):
                sx, sy, qx, qy = (x[t] for x in batch.tensors())
                fast = {k: v.detach().requires_grad_(True) for k, v in start.items()}
                for _ in range(steps):
                    loss = F.cross_entropy(functional_call(module, fast, (sx,)), sy)
                    grads = torch.autograd.grad(loss, list(fast.values()))
                    fast = {
                        k: (v - lr * g).detach().requires_grad_(True)
                        for (k, v), g in zip(fast.items(), grads, strict=True)
                    }
                with torch.no_grad():
                    total += F.cross_entropy(functional_call(module, fast, (qx,)), qy).item()
            values[i, j] = total / len(batch)
    return values


# Grid points per vmap call: the documented default. On a CPU the chunk's activations must stay
# in the last-level cache; far larger chunks run slower than the per-point loop (docs/performance.md).
POINT_CHUNK = SurfaceOptions().point_chunk


@dataclass
class SurfaceProblem:
    """A Conv4 at θ, fixed tasks, two filter-normalised directions and a grid: one 2-D surface."""

    module: torch.nn.Module
    params: dict
    batch: TaskBatch
    delta: dict
    eta: dict
    coords: torch.Tensor
    context: ProbeContext
    spec: SurfaceSpec

    @classmethod
    def build(cls, device, *, filters: int, tasks: int, resolution: int, steps: int, lr: float = 0.4):
        module, params = convnet(filters, 28, device)
        forward = make_forward(module)
        batch = omniglot_like_tasks(tasks, 28, 15, device)
        rng = generator(0, "surface-directions")
        delta, eta = filter_normalised_direction(params, rng), filter_normalised_direction(params, rng)
        coords = torch.linspace(-1, 1, resolution, device=device)
        context = ProbeContext(forward, params, batch, steps, lr, tasks, 0, head_names(module))
        return cls(module, params, batch, delta, eta, coords, context, SurfaceSpec(tasks=tasks))

    def metaland(self, point_chunk: int, engine: str = "vmap") -> torch.Tensor:
        """The surface by ``metaland.probes.surface``, ``point_chunk`` grid points per ``vmap`` call, or
        per grouped network under the hybrid engine."""
        grouped = task_batched_forward(self.module) if engine == "hybrid" else None
        context = dataclasses.replace(self.context, batched_forward=grouped)
        return loss_surface(context, self.spec, self.delta, self.eta, self.coords, point_chunk).double().cpu()


def row_surface(device, rounds: int, *, filters: int, resolution: int, tasks: int, steps: int) -> list[Row]:
    problem = SurfaceProblem.build(device, filters=filters, tasks=tasks, resolution=resolution, steps=steps)
    module, params, batch, delta, eta = problem.module, problem.params, problem.batch, problem.delta, problem.eta
    lr = problem.context.lr

    auto = resolve_engine("auto", device=device, update=None)
    result = timed_rounds(
        {
            "metaland": partial(problem.metaland, POINT_CHUNK, auto),
            "metaland-vmap": partial(problem.metaland, POINT_CHUNK, "vmap"),
            "metaland-loop": partial(problem.metaland, 1),
            "loop": lambda: per_point_surface(module, params, batch, delta, eta, problem.coords.cpu(), steps, lr),
        },
        rounds,
        device,
    )
    exact = per_point_surface(
        module,
        {k: v.double() for k, v in params.items()},
        TaskBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y),
        {k: v.double() for k, v in delta.items()},
        {k: v.double() for k, v in eta.items()},
        problem.coords.cpu().double(),
        steps,
        lr,
    )
    errors = {name: (surface - exact).abs().max().item() for name, surface in result["outputs"].items()}
    labels = {"metaland": f", engine {auto} (auto)", "metaland-vmap": ", engine vmap"}
    labels["metaland-loop"] = ", point_chunk 1 (loop)"
    what = f"2-D surface {resolution}×{resolution}, {tasks} tasks, T = {steps} from every point (Conv4-{filters})"
    t = result["times"]
    return [
        Row(
            what + labels[mine],
            t[mine],
            t["loop"],
            "per-point loop",
            f"max abs error against float64 {errors[mine]:.1e} (the loop's {errors['loop']:.1e})",
            5.0,
            result["others"],
        )
        for mine in ("metaland", "metaland-vmap", "metaland-loop")
        if mine != "metaland-vmap" or auto != "vmap"
    ]


# --------------------------------------------------------------------------------------------
# Row 4: a whole checkpoint probe
# --------------------------------------------------------------------------------------------

GUIROY_PROBES = {
    "adaptation": {},
    "trajectory_coherence": {},
    "gradient_coherence": {},
    "curvature": {"tasks": 60, "max_iters": 100, "tol": 1e-3, "min_iters": 10, "krylov_dim": 40},
}


def row_probe(device, rounds: int, *, filters: int, tasks: int) -> list[Row]:
    module, params = convnet(filters, 28, device)
    forward = make_forward(module)
    batch = omniglot_like_tasks(tasks, 28, 15, device)
    options = {name: PROBES.get(name).options_model(**o) for name, o in GUIROY_PROBES.items()}
    options["curvature"] = PROBES.get("curvature").options_model(**{**GUIROY_PROBES["curvature"], "tasks": tasks})

    grouped = task_batched_forward(module) if resolve_engine("auto", device=device, update=None) == "hybrid" else None

    def probe(chunk: int):
        context = ProbeContext(forward, params, batch, 5, 0.4, chunk, 0, head_names(module))
        if chunk != 1:  # metaland's side adapts as the run's engine would (auto)
            context.batched_forward = grouped
        summary = {}
        for name, opts in options.items():
            summary.update(PROBES.get(name).run(context, opts).summary)
        return summary

    result = timed_rounds({"metaland": lambda: probe(tasks), "loop": lambda: probe(1)}, rounds, device)
    a, b = result["outputs"]["metaland"], result["outputs"]["loop"]
    worst = max(abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in a)
    engine = "hybrid" if grouped is not None else "vmap"
    what = f"all guiroy2019 probes of one checkpoint, {tasks} tasks (Conv4-{filters}, T = 5), engine {engine} (auto)"
    t = result["times"]
    agreement = f"max rel. diff {worst:.1e}"
    return [Row(what, t["metaland"], t["loop"], "one task at a time", agreement, None, result["others"])]


# --------------------------------------------------------------------------------------------
# Stage start-up: the fixed cost of one DVC stage process
# --------------------------------------------------------------------------------------------

STAGE_WORK = "import torch\ntorch.func.grad(lambda x: (x * x).sum())(torch.ones(3))\n"

STAGE_METALAND = (
    "import os, sys\n"
    "from metaland.tracking import StageRun, stage_run\n"
    "tracking = StageRun()\n"
    + STAGE_WORK
    + "with stage_run('probe', experiment='bench', run_key=sys.argv[1], params={'k': 1}, "
    "started=tracking) as run:\n"
    "    run.log_metrics({'m': 1.0}, step=0)\n"
    "os._exit(0)\n"
)

STAGE_IN_PROCESS = (
    "import sys\n" + STAGE_WORK + "from metaland.tracking import ensure_store, mlflow_client\n"
    "from metaland.tracking_sidecar import log_metrics, open_run\n"
    "ensure_store()\n"
    "client = mlflow_client()\n"
    "run_id, _ = open_run(client, 'probe', 'bench', sys.argv[1], {'k': '1'}, '', False)\n"
    "log_metrics(client, run_id, {'m': 1.0}, 0, 0)\n"
    "client.set_terminated(run_id, 'FINISHED')\n"
)


def row_stage(rounds: int) -> list[Row]:
    """Both sides run as fresh processes against one SQLite store, as DVC runs a stage."""
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}

        def stage(code: str, key: str) -> None:
            subprocess.run([sys.executable, "-c", code, key], env=env, check=True, cwd=folder)

        result = timed_rounds(
            {
                "metaland": partial(stage, STAGE_METALAND, "sidecar"),
                "in process": partial(stage, STAGE_IN_PROCESS, "inline"),
            },
            rounds,
            torch.device("cpu"),
        )
        from mlflow import MlflowClient

        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        finished = {
            key: sum(
                r.info.status == "FINISHED" and r.data.metrics == {"m": 1.0}
                for r in client.search_runs(
                    [client.get_experiment_by_name("metaland/bench").experiment_id],
                    filter_string=f"tags.`metaland.run_key` = '{key}'",
                )
            )
            for key in ("sidecar", "inline")
        }
    t = result["times"]
    what = "stage start-up: import PyTorch + `torch.func.grad`, open an MLflow run, log, close, exit"
    agreement = f"FINISHED runs with the metric: {finished['sidecar']} / {finished['inline']} of {rounds + 1} each"
    return [Row(what, t["metaland"], t["in process"], "MLflow in the process", agreement, None, result["others"])]


# --------------------------------------------------------------------------------------------
# Scaling: how metaland's own cost grows
# --------------------------------------------------------------------------------------------


def scaling_rows(device, rounds: int, *, quick: bool) -> list[tuple[str, str, float]]:
    """(setting, value, median seconds) of a second-order meta-iteration as meta-batch size, inner
    steps, model width and tasks vectorised together vary one at a time around Conv4-32, meta-batch
    8, T = 3, and of a 2-D surface as its resolution grows."""
    base = {"filters": 16 if quick else 32, "meta_batch": 4 if quick else 8, "steps": 3, "chunk": 0}
    sweeps = {
        "meta_batch": (2, 4) if quick else (4, 8, 16),
        "steps": (1, 3) if quick else (1, 3, 5),
        "filters": (8, 16) if quick else (16, 32, 64),
        "chunk": (1, 0) if quick else (1, 2, 4, 0),
    }
    rows = []
    for knob, values in sweeps.items():
        for value in values:
            setting = {**base, knob: value}
            module, params = convnet(setting["filters"], 28, device)
            forward = make_forward(module)
            batch = omniglot_like_tasks(setting["meta_batch"], 28, 15, device)
            problem = MetaProblem(forward, cross_entropy(forward), setting["steps"], 0.4, setting["chunk"])
            maml = ALGORITHMS.get("maml").meta_gradient
            seconds = median_seconds(partial(maml, problem, params, batch, NoOptions()), rounds, device)
            label = "all" if knob == "chunk" and value == 0 else str(value)
            rows.append((f"meta-iteration: {knob}", label, seconds))
    for resolution in (5, 11) if quick else (11, 21, 31):
        problem = SurfaceProblem.build(device, filters=16, tasks=4, resolution=resolution, steps=1)
        seconds = median_seconds(partial(problem.metaland, POINT_CHUNK), rounds, device)
        rows.append(("surface: resolution (Conv4-16, 4 tasks, T = 1)", f"{resolution}×{resolution}", seconds))
    return rows


def print_rows(rows: list[Row]) -> None:
    for row in rows:
        goal = f"≥ {row.goal:g}×" if row.goal else ""
        met = "" if row.goal is None else (" ✓" if row.ratio >= row.goal and row.idle else " ✗")
        low, high = row.ratio_spread
        worst = max(row.others, default=0.0)
        idle = f"{worst:.1%} {'✓' if row.idle else '✗ contended'}"
        click.echo(
            f"| {row.name} | {statistics.median(row.ours):.4f} | {row.reference_name} | "
            f"{statistics.median(row.reference):.4f} | {row.ratio:.2f}×{met} ({low:.2f}-{high:.2f}) | {goal} | "
            f"{idle} | {row.agreement} |"
        )


def cpu_model() -> str:
    """The CPU's model name and the vector-instruction flags that change its float results."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    shown = [flag for flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if flag in flags]
    shown_flags = " ".join(shown) or "none of avx2/avx512/amx"
    return f"{name or platform.processor() or platform.machine()} (flags: {shown_flags})"


def gemm_gflops(device: torch.device, size: int = 2048, rounds: int = 5) -> float:
    """fp32 matrix-product rate of this machine now, GFLOP/s (median of ``rounds``): the ceiling the
    ratios are read against."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    seconds = median_seconds(lambda: a @ b, rounds, device)
    return 2 * size**3 / seconds / 1e9


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="Smaller sizes and fewer rounds: a smoke run of every row.")
@click.option("--rounds", default=5, show_default=True, help="Timed rounds per row (median reported).")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["meta", "hessian", "surface", "probe", "stage", "scaling"]),
    help="Rows to run.",
)
@click.option(
    "--malloc",
    default="tuned",
    show_default=True,
    type=click.Choice(["tuned", "default"]),
    help="tuned: glibc malloc as metaland's stages set it (metaland.runtime.tune_allocator), for both sides of "
    "every row (one process); default: glibc's own settings.",
)
def main(quick: bool, rounds: int, threads: int, device: str, only: tuple[str, ...], malloc: str):
    """Time metaland against reference implementations; print medians, ratios and agreement.

    Each row is printed as soon as it is measured (the whole run takes tens of minutes on 2 cores)."""
    tuned = malloc == "tuned" and tune_allocator()
    torch.set_num_threads(threads)
    device = torch.device(device)
    rounds = 2 if quick else rounds
    filters = 16 if quick else 64
    wanted = set(only) or {"meta", "hessian", "surface", "probe", "stage", "scaling"}
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU, {threads} threads"
    )
    click.echo(f"metaland benchmarks on {where}; torch {torch.__version__}; medians of {rounds} interleaved rounds")
    click.echo(
        f"CPU: {cpu_model()}, {psutil.cpu_count()} logical CPUs; torch threads {torch.get_num_threads()} intra-op, "
        f"{torch.get_num_interop_threads()} inter-op; fp32 GEMM {gemm_gflops(device):.0f} GFLOP/s (2048², measured "
        "now); " + ("malloc tuned as in metaland's stages" if tuned else "malloc as the C library sets it")
    )
    click.echo(
        f"Idle check: a round is redone (up to {RETRIES} times) when other processes took more than "
        f"{OTHERS_LIMIT:.0%} of the CPU; the column gives the largest share in a kept round. Speed-up: median of "
        "the medians (lowest-highest single-round ratio)."
    )
    click.echo("| what | metaland s | reference | reference s | speed-up | goal | others' CPU | agreement |")
    click.echo("|---|---:|---|---:|---:|---:|---:|---|")
    if "meta" in wanted:
        for first_order in (False, True):
            print_rows(
                row_meta_iteration(
                    device, rounds, filters=filters, meta_batch=4 if quick else 16, steps=5, first_order=first_order
                )
            )
    if "hessian" in wanted:
        print_rows(row_hessian(device, rounds, filters=filters, tasks=4 if quick else 16, target=1e-4))
    if "surface" in wanted:
        for resolution in (11,) if quick else (21, 51):
            surface_rounds = 1 if resolution > 21 else rounds
            print_rows(row_surface(device, surface_rounds, filters=16, resolution=resolution, tasks=4, steps=1))
    if "probe" in wanted:
        print_rows(row_probe(device, rounds, filters=filters, tasks=8 if quick else 60))
    if "stage" in wanted:
        print_rows(row_stage(rounds))
    if "scaling" in wanted:
        click.echo("\nHow metaland's cost grows (one knob at a time; second-order meta-iteration around the base)")
        click.echo("| what | value | seconds | relative to the first value |")
        click.echo("|---|---:|---:|---:|")
        first: dict[str, float] = {}
        for what, value, seconds in scaling_rows(device, rounds, quick=quick):
            first.setdefault(what, seconds)
            click.echo(f"| {what} | {value} | {seconds:.4f} | {seconds / first[what]:.2f}× |")


if __name__ == "__main__":
    main()
