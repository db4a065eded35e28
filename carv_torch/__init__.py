"""carv_torch: compute-aware variance reduction (CARV) on torch tensors.

The *parity layer* has the same names and signatures as :mod:`carv_core`
(``rng`` becomes ``generator``, a ``torch.Generator``; some functions add
keyword-only ``device=``/``dtype=``) and is verified against it: the same
uniforms give the same integer timesteps exactly, and the same weights and
estimates to float64/float32 rounding. One module per concept:
:mod:`~carv_torch.schedules`, :mod:`~carv_torch.weighting`,
:mod:`~carv_torch.distributions`, :mod:`~carv_torch.proposals`,
:mod:`~carv_torch.sampling`, :mod:`~carv_torch.estimator`,
:mod:`~carv_torch.allocation`. Value checks that force a host sync can be
switched off with :func:`set_validate_args`.
"""

from carv_core.designs import (
    IID,
    Antithetic,
    GlobalStrata,
    Layout,
    PermutedStrata,
    Sobol,
    Stratified,
    Systematic,
    apply_layout,
)
from carv_core.sampling import MonotoneSampler
from carv_core.quadrature import FixedGrid
from carv_core.world_designs import WorldStrata, world_strata

from ._validation import is_validating, set_validate_args
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
from .distributions import PiecewiseDensity, pmf, tabulate_density, uniform_timesteps
from .diagnostics import (Diagnosis, GradientMonitor, ProbeNormMonitor, SpeedupPrediction, best_speedup, diagnose,
                          gradient_sq_norm, noise_scale, predicted_speedup, speedup)
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
    Design,
    InverseCDFSampler,
    as_design,
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
    # validation switch (torch only)
    "is_validating", "set_validate_args",
    # parity layer: the names of carv_core.__all__ (designs are backend-agnostic objects,
    # shared as they are: their integer layouts are applied on the device)
    "IID", "Antithetic", "GlobalStrata", "Layout", "PermutedStrata", "Sobol", "Stratified",
    "Systematic", "FixedGrid", "apply_layout", "MonotoneSampler", "WorldStrata", "world_strata",
    "Allocation", "Prediction", "best_allocation", "cost", "ecm", "k_star", "optimal_k",
    "predict", "predicted_variance", "relative_efficiency", "reuse_ceiling",
    "SpeedupPrediction", "best_speedup", "gradient_sq_norm", "noise_scale", "predicted_speedup", "speedup",
    "Diagnosis", "GradientMonitor", "ProbeNormMonitor", "diagnose",
    "PiecewiseDensity", "pmf", "tabulate_density", "uniform_timesteps",
    "HierarchicalEstimate", "VarianceComponents", "Welford", "hierarchical_estimate",
    "variance_components",
    "AdaptiveProposal", "defensive_mixture", "importance_weights", "oracle_proposal",
    "weight_heuristic",
    "DESIGNS", "Design", "as_design", "InverseCDFSampler", "TimestepDraw", "cdf_from_pmf", "continuous_from_uniforms",
    "draw_uniforms", "gaussian_noise", "inverse_cdf", "stratify", "stratum_pmfs",
    "timesteps_from_uniforms",
    "BETA_SCHEDULES", "ContinuousSchedule", "DiscreteSchedule", "continuous_schedule",
    "make_betas", "make_schedule",
    "WEIGHTINGS", "sds_weight", "weighting",
]

# Torch-only modules: teachers, objectives, guidance, accounting, renderers.
from .accounting import KIND_NAMES, Accountant, KDecision  # noqa: E402
from .distributed import World, current_world, rank_seed  # noqa: E402
from .local_ranks import run_local  # noqa: E402
from .estimator import split_half_components  # noqa: E402
from .breakpoints import BreakpointSampler, as_sampler, call_transform, find_breakpoints, tabulate  # noqa: E402
from .guidance import (  # noqa: E402
    PROPOSALS,
    SAMPLERS,
    CARVGuidance,
    GuidanceConfig,
    GuidanceStep,
    scheduled_value,
)
from .integrands import DMD, SDS, Integrand, Objective  # noqa: E402
from .objectives import (  # noqa: E402
    AttributionEstimate,
    GradientEstimate,
    InnerDraws,
    attribution,
    dmd,
    draw_inner,
    estimate,
    estimate_from_draws,
    sds,
    surrogate_loss,
)
from .proposal_rules import (  # noqa: E402
    FixedProposal,
    OnlineProposal,
    OracleProposal,
    Proposal,
    UniformProposal,
    WeightHeuristicProposal,
    as_proposal,
)
from .stable_diffusion import (  # noqa: E402
    PromptEmbeddings,
    prompt_embeddings,
    resize_to_teacher,
    teacher_from_pipeline,
    teacher_resolution,
)
from .threestudio import (  # noqa: E402
    CFG_CONVENTIONS,
    POSTERIORS,
    FixedPrompt,
    PromptProvider,
    ThreestudioGuidance,
)
from .renderers import Cameras, GridRenderer, orbit_cameras, random_cameras  # noqa: E402
from .cameras import (  # noqa: E402
    AntipodalPairs, CameraDraw, camera_uniforms, cameras_from_uniforms, draw_cameras,
    orbit_from_parameters, sequence_uniforms, sobol_sequence,
)
from .control_variates import (  # noqa: E402
    CellTable, UpstreamComponents, cell_index, per_view_gradients, replicated_components,
)
from .teachers import (  # noqa: E402
    NAN_POLICIES,
    PREDICTION_TYPES,
    DiffusersTeacher,
    Teacher,
    check_finite,
)
from .mixture_teacher import GaussianMixtureTeacher  # noqa: E402

__all__ += [
    "KIND_NAMES", "Accountant", "KDecision", "split_half_components",
    "World", "current_world", "rank_seed", "run_local",
    "BreakpointSampler", "as_sampler", "call_transform", "find_breakpoints", "tabulate",
    "PROPOSALS", "SAMPLERS", "CARVGuidance", "GuidanceConfig", "GuidanceStep", "scheduled_value",
    "DMD", "SDS", "Integrand", "Objective",
    "AttributionEstimate", "GradientEstimate", "InnerDraws", "attribution", "dmd", "draw_inner",
    "estimate", "estimate_from_draws", "sds", "surrogate_loss",
    "FixedProposal", "OnlineProposal", "OracleProposal", "Proposal", "UniformProposal",
    "WeightHeuristicProposal", "as_proposal",
    "PromptEmbeddings", "prompt_embeddings", "resize_to_teacher", "teacher_from_pipeline",
    "teacher_resolution",
    "CFG_CONVENTIONS", "POSTERIORS", "FixedPrompt", "PromptProvider", "ThreestudioGuidance",
    "Cameras", "GridRenderer", "orbit_cameras", "random_cameras",
    "AntipodalPairs", "camera_uniforms", "cameras_from_uniforms", "sequence_uniforms", "sobol_sequence",
    "CameraDraw", "draw_cameras", "orbit_from_parameters", "CellTable", "UpstreamComponents", "cell_index",
    "per_view_gradients", "replicated_components",
    "NAN_POLICIES", "PREDICTION_TYPES", "DiffusersTeacher", "GaussianMixtureTeacher", "Teacher",
    "check_finite",
]
