"""Layer-wise adaptation at meta-test (seed 003 §3.2, Fig. 2): adapt only one layer, or freeze only it.

For each named layer ℓ (shell patterns over parameter names, as ``train.inner_params``: ``conv2.*``)
every fixed task is adapted from θ^s with the run's inner loop moving

* only ℓ ("adapting only this"): ``layerwise_only_<ℓ>_accuracy`` / ``_loss``;
* every parameter but ℓ ("freezing only this"): ``layerwise_freeze_<ℓ>_accuracy`` / ``_loss``;

and its post-adaptation query accuracy and loss are measured. Fig. 2's right panel (``noise``): one layer (the
FC layer) is perturbed with noise of strength σ before adaptation while others (C1-C3) are held fixed and the
rest adapts: ``layerwise_noise_<σ>_accuracy`` / ``_loss``. Training is untouched: only the test-time
adaptation changes, as in the paper. A layer the model lacks (``conv3`` of a 2-layer
CNN, any conv of a linear model) is skipped for that run, so one study-wide list serves models of
several depths; so is "freezing only" a layer that is the whole model (logistic regression's fc).
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator

from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.inner import model_part, pattern_matches
from metaland.models import ParamDict
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec
from metaland.schema import Params
from metaland.seeding import generator


class LayerNoiseOptions(Params):
    layer: str = Field(
        "",
        description="Comma-separated patterns of the layer perturbed before adaptation (seed 003 Fig. 2 right: the "
        "FC layer, 'fc.*'); empty: no noise panel.",
    )
    frozen: str = Field(
        "",
        description="Patterns of the layers held fixed during adaptation (seed 003: C1-C3); every other parameter "
        "adapts with the run's inner loop.",
    )
    scales: list[float] = Field(
        default_factory=list,
        description="Noise strengths σ ≥ 0. Each tensor W of the layer becomes W + σ‖W‖ u / ‖u‖, u standard "
        "Gaussian: σ is the noise's size relative to the weights (the seed states neither the family nor the grid).",
    )
    draws: int = Field(3, ge=1, description="Noise draws per σ, each adapting every fixed task; per task, the mean.")

    @field_validator("scales")
    @classmethod
    def _non_negative(cls, value: list[float]) -> list[float]:
        if any(sigma < 0 for sigma in value):
            raise ValueError("noise strengths must be ≥ 0")
        return value


class LayerwiseOptions(Params):
    layers: dict[str, str] = Field(
        default_factory=dict,
        description="Layer name -> comma-separated shell patterns over parameter names "
        "(e.g. {conv1: 'conv1.*', fc: 'fc.*'}); seed 003 §3.2, Fig. 2: C1-C4 and FC.",
    )
    noise: LayerNoiseOptions = Field(
        default_factory=LayerNoiseOptions, description="Fig. 2's right panel: accuracy against noise on one layer."
    )


def layer_members(names: list[str], patterns: str) -> frozenset[str]:
    """The parameters a layer's comma-separated patterns match (empty: the model lacks the layer)."""
    return frozenset(name for matched in pattern_matches(names, patterns).values() for name in matched)


def layerwise(context: ProbeContext, options: LayerwiseOptions) -> ProbeOutput:
    names = list(model_part(context.params))
    per_task = {}
    for layer, patterns in options.layers.items():
        members = layer_members(names, patterns)
        if not members:
            continue
        for mode, adapted in (("only", members), ("freeze", frozenset(names) - members)):
            if not adapted:  # freezing the model's only layer adapts nothing
                continue
            metrics = adapted_metrics(context, context.params, adapted)
            per_task[f"layerwise_{mode}_{layer}_accuracy"] = metrics["query_accuracy"]
            per_task[f"layerwise_{mode}_{layer}_loss"] = metrics["query_loss"]
    per_task |= layer_noise(context, options.noise, names)
    return ProbeOutput(per_task, {name: values.mean().item() for name, values in per_task.items()})


def adapted_metrics(context: ProbeContext, start: ParamDict, adapted: frozenset[str]) -> dict[str, torch.Tensor]:
    """Each fixed task's post-adaptation query metrics, adapted from ``start`` by the run's inner loop moving only
    the parameters ``adapted``."""
    metrics, _ = evaluate_tasks(
        context.forward,
        start,
        context.batch,
        steps=context.steps,
        lr=context.lr,
        chunk=context.chunk,
        inner_params=adapted,
        update=context.update,
    )
    return metrics


def noisy(params: ParamDict, members: frozenset[str], sigma: float, rng: torch.Generator) -> ParamDict:
    """θ with each tensor W of ``members`` moved to W + σ‖W‖ u / ‖u‖, u standard Gaussian (zero tensors stay)."""
    moved = dict(params)
    for name in sorted(members):
        w = params[name]
        u = torch.randn(w.shape, generator=rng, dtype=w.dtype).to(w.device)
        moved[name] = w + sigma * w.norm() * u / u.norm()
    return moved


def layer_noise(context: ProbeContext, options: LayerNoiseOptions, names: list[str]) -> dict[str, torch.Tensor]:
    """Per σ, each task's post-adaptation query accuracy and loss from θ with noise on ``options.layer`` (mean over
    ``options.draws`` draws; σ = 0 adapts once, every draw being θ itself), the ``options.frozen`` layers held
    fixed; nothing for a model that lacks the layer."""
    members = layer_members(names, options.layer) if options.layer else frozenset()
    if not members or not options.scales:
        return {}
    adapted = frozenset(names) - layer_members(names, options.frozen)
    per_task = {}
    for i, sigma in enumerate(options.scales):
        draws = []
        for draw in range(options.draws if sigma else 1):
            start = noisy(context.params, members, sigma, generator(context.seed, "layerwise-noise", i, draw))
            draws.append(adapted_metrics(context, start, adapted))
        for metric in ("accuracy", "loss"):
            per_task[f"layerwise_noise_{sigma:g}_{metric}"] = torch.stack([m[f"query_{metric}"] for m in draws]).mean(0)
    return per_task


PROBES.register(
    "layerwise",
    ProbeSpec(
        "layerwise",
        "Query accuracy after adapting only / freezing only one layer at meta-test (seed 003 §3.2, Fig. 2)",
        LayerwiseOptions,
        layerwise,
    ),
)
