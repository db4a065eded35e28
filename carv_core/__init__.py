"""carv_core: the numpy reference for compute-aware variance reduction (CARV).

One module per concept: :mod:`~carv_core.schedules`, :mod:`~carv_core.weighting`,
:mod:`~carv_core.distributions`, :mod:`~carv_core.proposals`,
:mod:`~carv_core.designs`, :mod:`~carv_core.sampling`, :mod:`~carv_core.breakpoints`,
:mod:`~carv_core.estimator`,
:mod:`~carv_core.allocation`, :mod:`~carv_core.diagnostics`, :mod:`~carv_core.upstream`, and the public test kit :mod:`carv_core.testing`.
Never imports torch.
"""

from .allocation import (
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
from .diagnostics import SpeedupPrediction, best_speedup, gradient_sq_norm, noise_scale, predicted_speedup, speedup
from .upstream import AntipodalPairs, camera_uniforms, cameras_from_uniforms, sequence_uniforms, sobol_sequence
from .breakpoints import BreakpointSampler, call_transform, find_breakpoints, tabulate
from .world_designs import WorldStrata, world_strata
from .quadrature import FixedGrid
from .designs import (
    IID,
    Antithetic,
    Design,
    GlobalStrata,
    Layout,
    PermutedStrata,
    Sobol,
    Stratified,
    Systematic,
    apply_layout,
    as_design,
)
from .distributions import PiecewiseDensity, pmf, tabulate_density, uniform_timesteps
from .estimator import (
    HierarchicalEstimate,
    VarianceComponents,
    Welford,
    hierarchical_estimate,
    variance_components,
)
from .proposals import (
    AdaptiveProposal,
    defensive_mixture,
    importance_weights,
    oracle_proposal,
    weight_heuristic,
)
from .sampling import (
    DESIGNS,
    InverseCDFSampler,
    MonotoneSampler,
    TimestepDraw,
    cdf_from_pmf,
    continuous_from_uniforms,
    draw_uniforms,
    gaussian_noise,
    inverse_cdf,
    stratify,
    stratum_pmfs,
    timesteps_from_uniforms,
)
from .schedules import (
    BETA_SCHEDULES,
    ContinuousSchedule,
    DiscreteSchedule,
    continuous_schedule,
    make_betas,
    make_schedule,
)
from .weighting import WEIGHTINGS, sds_weight, weighting

__version__ = "0.1.0"

__all__ = [
    "Allocation", "Prediction", "best_allocation", "cost", "ecm", "k_star", "optimal_k",
    "predict", "predicted_variance", "relative_efficiency", "reuse_ceiling",
    "SpeedupPrediction", "best_speedup", "gradient_sq_norm", "noise_scale", "predicted_speedup", "speedup",
    "PiecewiseDensity", "pmf", "tabulate_density", "uniform_timesteps",
    "HierarchicalEstimate", "VarianceComponents", "Welford", "hierarchical_estimate",
    "variance_components",
    "AdaptiveProposal", "defensive_mixture", "importance_weights", "oracle_proposal",
    "weight_heuristic",
    "BreakpointSampler", "call_transform", "find_breakpoints", "tabulate",
    "IID", "Antithetic", "Design", "FixedGrid", "GlobalStrata", "WorldStrata", "world_strata", "Layout", "PermutedStrata", "Sobol", "Stratified",
    "Systematic", "apply_layout", "as_design",
    "DESIGNS", "InverseCDFSampler", "MonotoneSampler", "TimestepDraw", "cdf_from_pmf", "continuous_from_uniforms",
    "draw_uniforms", "gaussian_noise", "inverse_cdf", "stratify", "stratum_pmfs",
    "timesteps_from_uniforms",
    "BETA_SCHEDULES", "ContinuousSchedule", "DiscreteSchedule", "continuous_schedule",
    "make_betas", "make_schedule",
    "WEIGHTINGS", "sds_weight", "weighting",
    "AntipodalPairs", "camera_uniforms", "cameras_from_uniforms", "sequence_uniforms", "sobol_sequence",
]
