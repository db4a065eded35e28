r"""Compute-aware allocation: cost model, optimal $K$, ECM and RE.

$C = R\,(c_u + K c_d)$, $V = (\sigma_B^2 + \sigma_W^2/K)/R$, $K^\star = \sqrt{(c_u/c_d)\,\sigma_W^2/\sigma_B^2}$.

This is scalar host-side maths over a handful of numbers, so the torch backend
uses :mod:`carv_core.allocation` itself: the names below *are* the core's
objects (one implementation, identical signatures). Pass Python floats
(``tensor.item()``), not tensors.
"""

from carv_core.allocation import (
    Allocation,
    Prediction,
    best_allocation,
    cost,
    ecm,
    k_star,
    optimal_k,
    predict,
    predicted_variance,
    relative_efficiency,
    reuse_ceiling,
)

__all__ = [
    "Allocation",
    "Prediction",
    "cost",
    "predicted_variance",
    "k_star",
    "optimal_k",
    "best_allocation",
    "predict",
    "ecm",
    "relative_efficiency",
    "reuse_ceiling",
]
