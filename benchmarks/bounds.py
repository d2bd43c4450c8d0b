"""What bounds metaland's CPU speed-ups: the work a meta-iteration does, the rate this machine
runs it at, and the convolution kernels ``vmap`` lowers per-task weights to.

Three measurements, each in one process and one run (docs/performance.md, "What bounds the rest"):

1. the floating-point operations of one meta-iteration (``torch.utils.flop_counter`` on the plain
   per-task autograd loop, whose convolutions it counts exactly) and the rate at which metaland,
   ``higher`` and the loop run them, against this machine's single-precision GEMM rate: a speed-up
   over ``higher`` of k× needs metaland to sustain k times ``higher``'s rate on the same work;
2. the convolutions of that meta-iteration and of a loss surface, run as ``vmap`` runs them (one
   grouped convolution over all tasks or grid points, whose weights differ) and as a loop runs
   them (one plain convolution each), forward and backward;
3. how the surface's time depends on the grid points evaluated together (``point_chunk``) under the
   engine ``auto`` picks on a CPU (``hybrid``: one grouped network per chunk): the activations of a
   chunk must stay within the last-level cache.

Usage: ``python benchmarks/bounds.py`` (``--rounds N``; needs the ``bench`` extra for ``higher``).
"""

from __future__ import annotations

import platform
from functools import partial
from statistics import median

import click
import torch
import torch.nn.functional as F
from run import SurfaceProblem, median_seconds, meta_gradients, timed_rounds  # benchmarks/run.py, beside this script
from torch.utils.flop_counter import FlopCounterMode

from metaland.meta.engines import resolve_engine

CPU = torch.device("cpu")
SURFACE_ENGINE = resolve_engine("auto", device=CPU, update=None)


def gemm_rate(rounds: int, size: int = 2048) -> float:
    """GFLOP/s of a large single-precision matrix product: the machine's practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / median_seconds(lambda: a @ b, rounds, CPU) / 1e9


def meta_iteration_rates(rounds: int, first_order: bool) -> tuple[float, list[tuple[str, float, float]]]:
    """GFLOP of one meta-iteration (Conv4-64, meta-batch 16, T = 5) and, per implementation,
    (name, seconds, GFLOP/s)."""
    functions = meta_gradients(64, 16, 5, first_order, CPU)
    with FlopCounterMode(display=False) as counter:
        functions["loop"]()
    flops = counter.get_total_flops()  # the same arithmetic on every side
    times = timed_rounds({k: functions[k] for k in ("metaland", "higher", "loop")}, rounds, CPU)["times"]
    return flops / 1e9, [(name, median(t), flops / median(t) / 1e9) for name, t in times.items()]


def kernel_times(images: int, channels: int, side: int, groups: int, out: int, rounds: int) -> list[float]:
    """Milliseconds of a 3×3 stride-2 convolution with per-group weights: loop forward, grouped
    forward, loop backward, grouped backward (input and weight gradients)."""
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(groups, images, channels, side, side, generator=g)
    ws = torch.randn(groups, out, channels, 3, 3, generator=g)
    grouped_x = xs.transpose(0, 1).reshape(images, groups * channels, side, side)
    grouped_w = ws.reshape(groups * out, channels, 3, 3)
    conv = partial(F.conv2d, stride=2, padding=1)
    grad_output = torch.randn(conv(grouped_x, grouped_w, groups=groups).shape, generator=g)
    per_group = grad_output.reshape(images, groups, out, *grad_output.shape[2:]).transpose(0, 1).contiguous()

    def backward(x, w, go, n_groups):
        return torch.ops.aten.convolution_backward(
            go, x, w, None, [2, 2], [1, 1], [1, 1], False, [0, 0], n_groups, [True, True, False]
        )

    times = timed_rounds(
        {
            "loop forward": lambda: [conv(x, w) for x, w in zip(xs, ws, strict=True)],
            "grouped forward": lambda: conv(grouped_x, grouped_w, groups=groups),
            "loop backward": lambda: [backward(x, w, go, 1) for x, w, go in zip(xs, ws, per_group, strict=True)],
            "grouped backward": lambda: backward(grouped_x, grouped_w, grad_output, groups),
        },
        rounds,
        CPU,
    )["times"]
    return [1e3 * median(t) for t in times.values()]


# (what, images, in channels, side, groups = tasks or points × tasks, out channels)
CONVOLUTIONS = (
    ("meta-iteration query, Conv4-64 layer 2: 75 images, 16 tasks", 75, 64, 14, 16, 64),
    ("meta-iteration support, Conv4-64 layer 2: 5 images, 16 tasks", 5, 64, 14, 16, 64),
    ("meta-iteration query, layer 1 (1 channel): 75 images, 16 tasks", 75, 1, 28, 16, 64),
    ("surface query, Conv4-16 layer 2: 75 images, 8 points × 4 tasks", 75, 16, 14, 32, 16),
)


def surface_chunks(rounds: int, resolution: int, chunks: tuple[int, ...]) -> list[tuple[str, float]]:
    """Seconds of a 2-D surface (Conv4-16, 4 tasks, T = 1) per ``point_chunk``, under the engine
    ``auto`` picks on a CPU."""
    problem = SurfaceProblem.build(CPU, filters=16, tasks=4, resolution=resolution, steps=1)
    chunk_surfaces = {str(c): partial(problem.metaland, c, SURFACE_ENGINE) for c in chunks}
    times = timed_rounds(chunk_surfaces, rounds, CPU)["times"]
    return [(chunk, median(t)) for chunk, t in times.items()]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rounds", default=5, show_default=True, help="Timed rounds per measurement (median reported).")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
def main(rounds: int, threads: int):
    """Print the work, rates and kernel times that bound metaland's speed-ups on this CPU."""
    torch.set_num_threads(threads)
    click.echo(f"{platform.machine()} CPU, {threads} threads; torch {torch.__version__}; medians of {rounds} rounds")
    peak = gemm_rate(rounds)
    click.echo(f"\nsingle-precision GEMM 2048×2048: {peak:.0f} GFLOP/s\n")
    click.echo("| meta-iteration (Conv4-64, meta-batch 16, T = 5) | GFLOP | implementation | s | GFLOP/s | of GEMM |")
    click.echo("|---|---:|---|---:|---:|---:|")
    for first_order in (False, True):
        gflop, rates = meta_iteration_rates(rounds, first_order)
        for name, seconds, rate in rates:
            order = "first" if first_order else "second"
            click.echo(
                f"| {order} order | {gflop:.1f} | {name} | {seconds:.3f} | {rate:.0f} | {100 * rate / peak:.0f}% |"
            )
    click.echo("\n| convolution (3×3, stride 2) | loop fwd ms | grouped fwd ms | loop bwd ms | grouped bwd ms |")
    click.echo("|---|---:|---:|---:|---:|")
    for what, *shape in CONVOLUTIONS:
        ms = kernel_times(*shape, rounds)
        click.echo(f"| {what} | " + " | ".join(f"{m:.1f}" for m in ms) + " |")
    click.echo(f"\n| 2-D surface 21×21, Conv4-16, 4 tasks, T = 1, engine {SURFACE_ENGINE}: point_chunk | s |")
    click.echo("|---:|---:|")
    for chunk, seconds in surface_chunks(max(1, rounds // 2), 21, (1, 2, 3, 4, 6, 8, 16, 32)):
        click.echo(f"| {chunk} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
