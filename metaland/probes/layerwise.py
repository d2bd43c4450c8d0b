"""Layer-wise adaptation at meta-test (seed 003 §3.2, Fig. 2): adapt only one layer, or freeze only it.

For each named layer ℓ (shell patterns over parameter names, as ``train.inner_params``: ``conv2.*``)
every fixed task is adapted from θ^s with the run's inner loop moving

* only ℓ ("adapting only this"): ``layerwise_only_<ℓ>_accuracy`` / ``_loss``;
* every parameter but ℓ ("freezing only this"): ``layerwise_freeze_<ℓ>_accuracy`` / ``_loss``;

and its post-adaptation query accuracy and loss are measured. Training is untouched: only the
test-time adaptation changes, as in the paper. A layer the model lacks (``conv3`` of a 2-layer
CNN, any conv of a linear model) is skipped for that run, so one study-wide list serves models of
several depths; so is "freezing only" a layer that is the whole model (logistic regression's fc).
"""

from __future__ import annotations

from pydantic import Field

from metaland.meta.evaluate import evaluate_tasks
from metaland.meta.inner import model_part, pattern_matches
from metaland.probes import PROBES, ProbeContext, ProbeOutput, ProbeSpec
from metaland.schema import Params


class LayerwiseOptions(Params):
    layers: dict[str, str] = Field(
        default_factory=dict,
        description="Layer name -> comma-separated shell patterns over parameter names "
        "(e.g. {conv1: 'conv1.*', fc: 'fc.*'}); seed 003 §3.2, Fig. 2: C1-C4 and FC.",
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
            metrics, _ = evaluate_tasks(
                context.forward,
                context.params,
                context.batch,
                steps=context.steps,
                lr=context.lr,
                chunk=context.chunk,
                inner_params=adapted,
                update=context.update,
            )
            per_task[f"layerwise_{mode}_{layer}_accuracy"] = metrics["query_accuracy"]
            per_task[f"layerwise_{mode}_{layer}_loss"] = metrics["query_loss"]
    return ProbeOutput(per_task, {name: values.mean().item() for name, values in per_task.items()})


PROBES.register(
    "layerwise",
    ProbeSpec(
        "layerwise",
        "Query accuracy after adapting only / freezing only one layer at meta-test (seed 003 §3.2, Fig. 2)",
        LayerwiseOptions,
        layerwise,
    ),
)
