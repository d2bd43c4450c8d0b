"""Wall time per meta-iteration of MAML and the Sharp-MAML variants, side by side (seed 002 gives
no cost; users need it to choose a variant).

Every variant runs on the same model, parameters and meta-batch, in one process, in interleaved
rounds (so drift of the machine hits all variants alike); the table gives the median seconds per
meta-iteration, the ratio to MAML measured in the same run, and the gradient evaluations per task
that the training log records. Usage::

    python benchmarks/sharpmaml_cost.py                     # the default profile's setting
    python benchmarks/sharpmaml_cost.py --filters 64 --inner-steps 5 --meta-batch 16 --device cuda
"""

from __future__ import annotations

import platform
import statistics
from functools import partial

import click
import torch
from run import convnet, omniglot_like_tasks, timed_rounds  # benchmarks/run.py, beside this script

from metaland.meta import ALGORITHMS, MetaProblem
from metaland.meta.inner import cross_entropy
from metaland.meta.sharp import SharpMAMLOptions, gradient_evaluations, variant_name
from metaland.models import make_forward

RADII = ((0.0, 0.0), (0.05, 0.0), (0.0, 0.05), (0.05, 0.05))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--filters", default=16, show_default=True, help="Conv4 width (default profile 16; the poster 64).")
@click.option("--image-size", default=28, show_default=True, help="Input side in pixels (Omniglot 28).")
@click.option("--inner-steps", default=1, show_default=True, help="T, inner SAM/GD steps (the poster: 1).")
@click.option("--inner-lr", default=0.4, show_default=True, help="α (β_low in the poster).")
@click.option("--meta-batch", default=4, show_default=True, help="Tasks per meta-iteration.")
@click.option("--queries", default=15, show_default=True, help="Query images per class.")
@click.option("--repeats", default=15, show_default=True, help="Timed meta-iterations per variant.")
@click.option("--threads", default=2, show_default=True, help="torch CPU threads.")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
def main(filters, image_size, inner_steps, inner_lr, meta_batch, queries, repeats, threads, device):
    """Print the median wall time per meta-iteration of each variant and its ratio to MAML."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    model, params = convnet(filters, image_size, device)
    forward = make_forward(model)
    batch = omniglot_like_tasks(meta_batch, image_size, queries, device)
    problem = MetaProblem(forward, cross_entropy(forward), inner_steps, inner_lr, 0)
    algorithm = ALGORITHMS.get("sharpmaml")
    variants = [SharpMAMLOptions(alpha_low=low, alpha_up=up) for low, up in RADII]
    times = timed_rounds(
        {variant_name(o): partial(algorithm.meta_gradient, problem, params, batch, o) for o in variants},
        repeats,
        device,
    )["times"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    click.echo(
        f"Conv4-{filters} {image_size}px, 5-way 1-shot, {queries} queries, meta-batch {meta_batch}, "
        f"T = {inner_steps}, second order; {repeats} rounds on {where}, {threads} threads"
    )
    click.echo(f"{'variant':<16}{'median s/it':>12}{'vs MAML':>9}{'grad evals/task':>17}")
    maml = statistics.median(times["maml"])
    for options in variants:
        name = variant_name(options)
        median = statistics.median(times[name])
        evals = gradient_evaluations(options, inner_steps)
        click.echo(f"{name:<16}{median:>12.4f}{median / maml:>8.2f}×{evals:>17d}")


if __name__ == "__main__":
    main()
