"""Learned inner updates (seed 003 §4): Meta-SGD, Meta-Curvature, KLin and KFC.

The inner step becomes (eq. 3)  θ' = θ − α U_φ(∇_θ L), and, for the paper's own optimizers, the
update itself adapts on the task after each step (eq. 4)  φ' = φ − α ∇_φ L(θ'(φ)), where θ'(φ)
is the step just taken. φ starts at the identity (A.1: "always initialized to the identity") and
is meta-learned with θ: the meta-gradient is MAML's (second order, ``metaland.meta.maml``) through
the learned steps. One transform per adapted parameter tensor, each with its own φ, no biases
(A.1.1, A.1.2). A gradient tensor is viewed as a stack of matrices G ∈ R^{n×m} (learn2learn's
``get_kronecker_dims``): a weight (n, m) as it is, a vector (n,) as (n, 1), a convolution
(N, C, H, W) as N matrices C × HW that share the transform (A.1.2: the optimizer is shared across
filters).

* ``metasgd`` (Li et al. 2017): U(g) = a ⊙ g with a per-parameter vector a (init 1, so the first
  step is α g); a is only meta-learned.
* ``metacurvature`` (Park & Oliva 2019): U(G) = L G R, a Kronecker-factored preconditioner
  A = Rᵀ ⊗ L (eq. 5 without bias); only meta-learned — "KLin without adapting the optimizer"
  (§4.2).
* ``klin``: eq. 5, U(G) = L G R, with L, R also adapted in the inner loop (eq. 4).
* ``kfc``: eqs. 6-7, U(G) = L_h σ(… σ(L_1 G R_1) …) R_h with ReLU σ, adapted by eq. 4. With
  ``normalise`` (A.1.2, nonlinear models) the gradient is scaled to unit norm, transformed, and
  multiplied by its norm times a learned scalar (init 1). With a ReLU, the identity init is not a
  plain gradient step: negative entries are clipped.

Where the adaptation lr enters is not stated (§4.1); here α multiplies U_φ in eq. 3 and is the
step of eq. 4 (the seed gives each run one adaptation lr).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from pydantic import Field
from torch.func import grad

from metaland.meta import ALGORITHMS, AlgorithmSpec
from metaland.meta.inner import LEARNED_UPDATE_PREFIX, InnerStep, sgd_step
from metaland.meta.maml import maml_meta_gradient
from metaland.models import ParamDict
from metaland.schema import NoOptions, Params


class KLinOptions(Params):
    adapt_optimizer: bool = Field(
        True, description="Adapt L, R in the inner loop by eq. 4 (seed 003 §4.1, §5: both sets are adapted)."
    )


class KFCOptions(Params):
    layers: int = Field(
        2,
        ge=1,
        le=8,
        description="Kronecker-factored maps W_i = R_iᵀ ⊗ L_i (eq. 6; seed 003 A.1.1: 2 for synthetic = 20,002 "
        "params, 4 for Omniglot ≈ 2.5M; A.1.2: 4 for the CNNs).",
    )
    normalise: bool = Field(
        False,
        description="Transform the unit-norm gradient and rescale by its norm × a learned scalar (init 1) "
        "(seed 003 A.1.2, nonlinear models).",
    )
    adapt_optimizer: bool = Field(
        True, description="Adapt the factors in the inner loop by eq. 4 (seed 003 §4.1, §5: both sets are adapted)."
    )


def kronecker_dims(shape: torch.Size) -> tuple[int, int, int]:
    """(stack, n, m): a gradient of ``shape`` as ``stack`` matrices n × m (learn2learn's convention)."""
    if len(shape) == 1:
        return 1, shape[0], 1
    if len(shape) == 2:
        return 1, shape[0], shape[1]
    return shape[0], shape[1], int(torch.Size(shape[2:]).numel())


def learned_name(param: str, factor: str) -> str:
    return f"{LEARNED_UPDATE_PREFIX}{param}.{factor}"


def factors_of(phi: ParamDict, param: str) -> ParamDict:
    """The factors of ``param``'s transform, keyed by factor name."""
    prefix = learned_name(param, "")
    return {k[len(prefix) :]: v for k, v in phi.items() if k.startswith(prefix)}


def kronecker_factors(params: ParamDict, adapted: frozenset[str] | None, maps: int) -> ParamDict:
    """Identity factors L_i (n × n) and R_i (m × m), i = 1..maps, for every adapted parameter."""
    phi = {}
    for name, p in params.items():
        if adapted is not None and name not in adapted:
            continue
        _, n, m = kronecker_dims(p.shape)
        for i in range(1, maps + 1):
            phi[learned_name(name, f"L{i}")] = torch.eye(n, dtype=p.dtype, device=p.device)
            phi[learned_name(name, f"R{i}")] = torch.eye(m, dtype=p.dtype, device=p.device)
    return phi


def kronecker_transform(g: torch.Tensor, factors: ParamDict, maps: int) -> torch.Tensor:
    """vec(L_h σ(… σ(L_1 G R_1) …) R_h) (eqs. 5-7; σ = ReLU between maps, none for one map)."""
    stack, n, m = kronecker_dims(g.shape)
    h = g.reshape(stack, n, m)
    for i in range(1, maps + 1):
        h = factors[f"L{i}"] @ h @ factors[f"R{i}"]
        if i < maps:
            h = torch.relu(h)
    return h.reshape(g.shape)


def kfc_transform(g: torch.Tensor, factors: ParamDict, maps: int, normalise: bool) -> torch.Tensor:
    """KFC (eqs. 6-7); with ``normalise``, ‖g‖ · s · KFC(g / ‖g‖) (A.1.2)."""
    if not normalise:
        return kronecker_transform(g, factors, maps)
    norm = g.norm()
    return norm * factors["scale"] * kronecker_transform(g / norm.clamp_min(1e-12), factors, maps)


def metasgd_params(params: ParamDict, adapted: frozenset[str] | None, options: Params) -> ParamDict:
    """a = 1 for every entry of every adapted parameter."""
    return {learned_name(n, "a"): torch.ones_like(p) for n, p in params.items() if adapted is None or n in adapted}


def kfc_params(params: ParamDict, adapted: frozenset[str] | None, options: KFCOptions) -> ParamDict:
    phi = kronecker_factors(params, adapted, options.layers)
    if options.normalise:
        for name, p in params.items():
            if adapted is None or name in adapted:
                phi[learned_name(name, "scale")] = torch.ones((), dtype=p.dtype, device=p.device)
    return phi


Transform = Callable[[torch.Tensor, ParamDict], torch.Tensor]


def learned_step(transform: Transform, adapt_optimizer: bool) -> InnerStep:
    """The inner step θ' = θ − α U_φ(g) (eq. 3), then φ' = φ − α ∇_φ L(θ'(φ)) if ``adapt_optimizer`` (eq. 4)."""

    def step(support_loss, current: ParamDict, grads: ParamDict, lr: float) -> ParamDict:
        phi = {k: v for k, v in current.items() if k.startswith(LEARNED_UPDATE_PREFIX)}

        def moved(factors: ParamDict) -> ParamDict:
            return {name: current[name] - lr * transform(g, factors_of(factors, name)) for name, g in grads.items()}

        theta = moved(phi)
        if not adapt_optimizer:
            return theta
        phi_grads = grad(lambda factors: support_loss({**current, **moved(factors)}))(phi)
        return {**theta, **sgd_step(phi, phi_grads, lr)}

    return step


def elementwise(g: torch.Tensor, factors: ParamDict) -> torch.Tensor:
    return factors["a"] * g


def _register(name: str, description: str, options_model, inner_update, learned_params) -> None:
    ALGORITHMS.register(
        name,
        AlgorithmSpec(
            name,
            description,
            options_model,
            partial(maml_meta_gradient, first_order=False),
            inner_update=inner_update,
            learned_params=learned_params,
        ),
    )


_register(
    "metasgd",
    "Meta-SGD (Li et al. 2017): per-parameter learning rates, meta-learned (seed 003 §4.2 baseline)",
    NoOptions,
    lambda options: learned_step(elementwise, adapt_optimizer=False),
    metasgd_params,
)
_register(
    "metacurvature",
    "Meta-Curvature (Park & Oliva 2019): Kronecker preconditioner L G R, meta-learned only (seed 003 §4.2)",
    NoOptions,
    lambda options: learned_step(partial(kronecker_transform, maps=1), adapt_optimizer=False),
    lambda params, adapted, options: kronecker_factors(params, adapted, 1),
)
_register(
    "klin",
    "KLin (seed 003 eq. 5): Kronecker-factored linear meta-optimizer, adapted in the inner loop (eq. 4)",
    KLinOptions,
    lambda options: learned_step(partial(kronecker_transform, maps=1), options.adapt_optimizer),
    lambda params, adapted, options: kronecker_factors(params, adapted, 1),
)
_register(
    "kfc",
    "KFC (seed 003 eqs. 6-7): Kronecker-factored fully connected meta-optimizer with ReLU, adapted (eq. 4)",
    KFCOptions,
    lambda options: learned_step(
        partial(kfc_transform, maps=options.layers, normalise=options.normalise), options.adapt_optimizer
    ),
    kfc_params,
)
