"""2-D loss surfaces around the meta-learned θ along filter-normalised random directions
(seed 001 §3.2 eqs. 8-9, after Li et al. 2018; seed 002's "landscape of MAML" figure).

    f(a, b) = (1/k) Σ_i L(Adapt_K(θ + a δ + b η; D_i); E_i),   a, b ∈ [−span, span]

The perturbation is applied to the initialisation θ and the K inner steps start from the
perturbed point (seed 001 §4.3.1: the centre is the weight the algorithm lands on); E_i is the
query set (the meta-loss) or the support set (inner-loop landscapes). δ and η are Gaussian,
drawn from the probe seed (the same draw for every run and checkpoint of a study, so surfaces
of different runs differ only by θ), then normalised filter by filter (eq. 9):
d_{l,j} ← d_{l,j} ‖θ_{l,j}‖ / ‖d_{l,j}‖ for every output filter / unit j of layer l; 1-D tensors
(biases, BatchNorm) get zero direction, as in seed 001's code. ``part`` restricts the directions
to the classifier head or to the feature layers (seed 001 §4.3.1's decomposition).

Every grid point and task is adapted independently, vectorised with ``vmap`` over tasks and over
chunks of grid points. Summaries per surface: the value at the centre and the mean rise of the
surface above it over the grid (a filter-normalised average sharpness).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch.func import vmap

from metaland.meta.inner import adapt
from metaland.models import ParamDict
from metaland.probes import PROBES, Grid, ProbeContext, ProbeOutput, ProbeSpec
from metaland.schema import Params
from metaland.seeding import generator


class SurfaceSpec(Params):
    loss: Literal["query", "support"] = Field(
        "query", description="Set the loss is measured on after adaptation: query (the meta-loss) or support."
    )
    inner_steps: int | None = Field(
        None, ge=0, description="K inner steps from each perturbed point; none = the run's T (seed 001: 0, 5, 10)."
    )
    tasks: int = Field(8, ge=1, description="First k fixed tasks averaged at every grid point (seed 001: 1, 4, 100).")
    part: Literal["all", "head", "features"] = Field(
        "all", description="Parameters the directions move: all, the classifier head only, or all but the head."
    )


class SurfaceOptions(Params):
    span: float = Field(1.0, gt=0, description="The grid covers [−span, span]² (seed 001: 1).")
    resolution: int = Field(
        11, ge=3, le=201, description="Grid points per axis, odd so the centre is on the grid (seed 001's code: 51)."
    )
    point_chunk: int = Field(8, ge=1, description="Grid points vectorised together; changes speed and memory only.")
    surfaces: dict[str, SurfaceSpec] = Field(
        default_factory=lambda: {"meta_loss": SurfaceSpec()},
        description="Surface name -> what it measures; every surface uses the same two directions.",
    )

    @field_validator("resolution")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd, so that the unperturbed θ is a grid point")
        return value


def filter_normalised_direction(params: ParamDict, rng: torch.Generator) -> ParamDict:
    """A Gaussian direction scaled filter by filter to the norms of θ (eq. 9); zero on 1-D tensors."""
    direction = {}
    for name, p in params.items():
        d = torch.randn(p.shape, generator=rng, dtype=torch.float32).to(device=p.device, dtype=p.dtype)
        if p.dim() < 2:
            direction[name] = torch.zeros_like(p)
            continue
        filters = d.reshape(p.shape[0], -1)
        scale = p.detach().reshape(p.shape[0], -1).norm(dim=1) / (filters.norm(dim=1) + 1e-10)
        direction[name] = (filters * scale[:, None]).reshape(p.shape)
    return direction


def restrict(direction: ParamDict, part: str, head: tuple[str, str] | None) -> ParamDict:
    """Zero the direction outside ``part`` (all / head / features)."""
    if part == "all":
        return direction
    if head is None:
        raise ValueError("a head / features surface needs the names of the head parameters")
    keep = (lambda name: name in head) if part == "head" else (lambda name: name not in head)
    return {name: d if keep(name) else torch.zeros_like(d) for name, d in direction.items()}


def loss_surface(
    context: ProbeContext, spec: SurfaceSpec, delta: ParamDict, eta: ParamDict, coords: torch.Tensor, point_chunk: int
) -> torch.Tensor:
    """f(a, b) for every (a, b) in ``coords`` × ``coords``: values [n, n], first index along δ."""
    theta = {name: p.detach() for name, p in context.params.items()}
    steps = context.steps if spec.inner_steps is None else spec.inner_steps
    tasks = context.batch.chunk(0, min(spec.tasks, len(context.batch)))

    def at_point(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        start = {name: theta[name] + a * delta[name] + b * eta[name] for name in theta}

        def task_loss(sx, sy, qx, qy):
            adapted = adapt(
                context.loss,
                start,
                sx,
                sy,
                steps=steps,
                lr=context.lr,
                first_order=True,
                adapted=context.adapted,
            )
            x, y = (qx, qy) if spec.loss == "query" else (sx, sy)
            return F.cross_entropy(context.forward(adapted, x), y)

        return vmap(task_loss)(*tasks.tensors()).mean()

    n = len(coords)
    values = vmap(at_point, chunk_size=point_chunk)(coords.repeat_interleave(n), coords.repeat(n))
    return values.detach().reshape(n, n)


def surfaces(context: ProbeContext, options: SurfaceOptions) -> ProbeOutput:
    context.require_gradient_descent("surface")
    rng = generator(context.seed, "surface-directions")
    delta = filter_normalised_direction(context.params, rng)
    eta = filter_normalised_direction(context.params, rng)
    like = next(iter(context.params.values()))
    coords = torch.linspace(-options.span, options.span, options.resolution, dtype=torch.float64)
    summary: dict[str, float] = {}
    grids: dict[str, Grid] = {}
    for name, spec in options.surfaces.items():
        d, e = (restrict(v, spec.part, context.head) for v in (delta, eta))
        on_model = coords.to(device=like.device, dtype=like.dtype)
        values = loss_surface(context, spec, d, e, on_model, options.point_chunk).cpu().double()
        centre = values[options.resolution // 2, options.resolution // 2]
        grids[name] = Grid(coords, coords, values)
        summary[f"{name}_centre"] = centre.item()
        summary[f"{name}_mean_rise"] = (values - centre).mean().item()
    return ProbeOutput({}, summary, grids)


def check_surfaces(options: SurfaceOptions, probe_config) -> str | None:
    too_many = sorted(name for name, spec in options.surfaces.items() if spec.tasks > probe_config.tasks)
    if too_many:
        return (
            f"surfaces {', '.join(too_many)} average more tasks than the {probe_config.tasks} fixed probe tasks. "
            "Fix: lower their tasks, or raise probe.tasks."
        )
    return None


PROBES.register(
    "surface",
    ProbeSpec(
        "surface",
        "2-D loss surfaces along filter-normalised random directions, adapted from each point (seed 001 eqs. 8-9)",
        SurfaceOptions,
        surfaces,
        check_surfaces,
    ),
)
