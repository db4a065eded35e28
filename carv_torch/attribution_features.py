r"""Per-example attribution features, batched over examples with ``torch.func``.

Gradient-based data attribution (TRAK, D-TRAK, TracIn) scores a training example
$x_{0,r}$ by a feature: the gradient of its diffusion loss with respect to a subset
$\phi$ of the model's parameters, averaged over $K$ inner draws $(t_{rk}, \epsilon_{rk})$,

$$ \phi_r = \nabla_\phi\,\frac1K\sum_{k=1}^K \tilde w_{rk}\,\ell(x_{0,r}, t_{rk}, \epsilon_{rk}),\qquad
   \ell = w(t)\,\frac1D\big\lVert\hat\epsilon_\phi(\alpha_t x_0 + \sigma_t\epsilon, t, y) - \epsilon\big\rVert^2 , $$

an unbiased estimate of $\bar\phi_r = \nabla_\phi\,\mathbb E_{t\sim p,\epsilon}[\ell]$ for any
unbiased sampler, $t \sim q$ and $\tilde w = p(t)/q(t)$. Here $x_0$ is the fixed
"upstream" of the hierarchy (design section 2) and one evaluation is one
loss-gradient.

:func:`attribution` computes all $R$ features with one ``torch.func.vmap`` of
``torch.func.grad`` over examples (no Python loop over $R$): inside, the teacher
runs on one example's $K$ noisy copies with ``params`` substituted by the vmapped
values. Under common random numbers the draws enter the vmap unbatched (one row, no
copy per example), and so does a condition with leading dimension 1.

The D-TRAK fixed grid $t_k = k\lfloor T/K\rfloor$ is the design :class:`carv_core.quadrature.FixedGrid`,
so it runs through the same sampler protocol as every design; the unbiased
D-TRAK-compatible alternative is :class:`carv_core.designs.Systematic`, the grid
shifted by one uniform: $u_k = (k + \xi)/K$.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch


from ._validation import as_int, describe, is_validating, set_validate_args
from .inner import (
    InnerDraws,
    _noise_tables,
    _noisy,
    _per_draw,
    draw_inner,
    resolve_sampler,
    restoring,
)
from .integrands import (
    Weighting,
    _check_output,
    _finite,
    _predict,
    _teacher_abar,
    _weight_table,
)

__all__ = ["AttributionEstimate", "attribution"]


class AttributionEstimate(NamedTuple):
    r"""Per-example features $\phi_r = \nabla_\phi \frac1K\sum_k \tilde w_{rk}\,\ell_{rk}$.

    Attributes:
        features: ``(R, P)``, $P$ the total number of entries of ``params``; ``(R, k)``
            when a ``project`` map to $k$ dimensions was given.
        losses: $\ell_{rk}$ (weighted by $w(t)$, not by $\tilde w$; detached), ``(R, K)``.
        t, w: ``(R, K)``; identical rows under common random numbers.
        K: inner draws per example.
    """

    features: torch.Tensor
    losses: torch.Tensor
    t: torch.Tensor
    w: torch.Tensor
    K: int


def _bindings(teacher, params: list) -> list:
    # Where each parameter lives: ("attr", teacher, name) for a tensor attribute of the
    # teacher, ("module", module, name) for a parameter of a module the teacher holds.
    want = {id(p): i for i, p in enumerate(params)}
    if len(want) != len(params):
        raise ValueError("params must not list the same tensor twice")
    found: list = [None] * len(params)
    modules = [teacher] if isinstance(teacher, torch.nn.Module) else []
    for name, value in vars(teacher).items():
        if isinstance(value, torch.Tensor) and id(value) in want:
            found[want[id(value)]] = ("attr", teacher, name)
        elif isinstance(value, torch.nn.Module):
            modules.append(value)
    for module in modules:
        for sub in module.modules():
            for name, value in sub._parameters.items():
                if value is not None and id(value) in want and found[want[id(value)]] is None:
                    found[want[id(value)]] = ("module", sub, name)
    for i, hit in enumerate(found):
        if hit is None:
            raise ValueError(f"params[{i}] (shape {tuple(params[i].shape)}) is neither a tensor attribute of "
                             f"the teacher nor a parameter of a module it holds (e.g. teacher.unet); "
                             "attribution substitutes params inside the teacher to differentiate per example")
    return found


@contextmanager
def _substituted(bindings: list, values):
    # Swap the bound tensors for `values` (vmapped, functional) and always swap back.
    old = []
    try:
        for (kind, owner, name), value in zip(bindings, values):
            store = owner.__dict__ if kind == "attr" else owner._parameters
            old.append((store, name, store[name]))
            store[name] = value
        yield
    finally:
        for store, name, value in reversed(old):
            store[name] = value


def _check_params(params) -> list:
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of tensors that require grad (e.g. "
                        f"list(unet.parameters())), got {describe(params)} ({type(params).__name__})") from None
    if not params or not all(isinstance(v, torch.Tensor) and v.requires_grad for v in params):
        raise ValueError("params must be a non-empty list of tensors that require grad")
    return params


def _check_x0(x0) -> None:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 2:
        raise TypeError(f"x0 must be a floating tensor of shape (R, C, H, W), got "
                        f"{type(x0).__name__} {tuple(getattr(x0, 'shape', ()))} {getattr(x0, 'dtype', '')}")
    if x0.shape[0] < 1:
        raise ValueError(f"x0 must hold at least one example, got shape {tuple(x0.shape)}")


def attribution(teacher, x0: torch.Tensor, params, *, K: int, p=None, q=None,
                design="stratified", sampler=None, weighting: Weighting = "uniform", condition=None,
                common_random_numbers: bool = False, antithetic: bool = False, generator=None,
                chunk_size: int | None = None,
                project: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AttributionEstimate:
    r"""Per-example diffusion-loss gradient features $\phi_r = \frac1K\sum_k \tilde w_{rk}\nabla_\phi\ell(x_{0,r}, t_{rk}, \epsilon_{rk})$.

    $\ell = w(t)\,\frac1D\lVert\hat\epsilon_\phi(\alpha_t x_0 + \sigma_t\epsilon, t, y) - \epsilon\rVert^2$
    (the training loss, $D$ entries per example). One ``torch.func.vmap`` over the
    examples of a chunk of ``torch.func.grad`` of $\frac1K\sum_k\tilde w_k\ell_k$: the
    teacher sees each example's $K$ noisy copies as one batch.

    Memory, with $A$ the activation memory of one teacher evaluation (forward and
    backward through the part of the network above ``params``), $D$ the entries of an
    example and $P$ the entries of ``params``: peak about
    $c\,(K(A + 2D) + 2P) + R\,(KD + P')$ floats for chunks of $c$ = ``chunk_size``
    examples (the draws $\epsilon$ take $RKD$, only $KD$ under common random numbers),
    where $P' = P$, or the output dimension $k$ of ``project`` (applied chunk by chunk,
    so the $R \times P$ matrix never exists). The only Python loop is over the
    $\lceil R/c\rceil$ chunks. ``chunk_size`` changes nothing but memory and speed: each
    example's computation is the same.

    With validation on (:func:`carv_torch.set_validate_args`), the teacher first runs
    once on all $RK$ noisy inputs without gradients, chunk by chunk: its output is
    checked (shape, dtype, device, finiteness with the teacher's ``nan_policy``, one host
    read per chunk), like every other objective. Inside the vmap the value checks are
    off. Switching validation off skips that pass (about one forward per draw).

    Args:
        teacher: a teacher differentiable in ``params`` (not frozen), e.g. a
            :class:`~carv_torch.teachers.DiffusersTeacher`.
        x0: examples ``(R, C, H, W)``.
        params: tensors requiring grad that are parameters of a module the teacher holds
            (e.g. ``list(unet.up_blocks[-1].parameters()) + list(unet.conv_out.parameters())``)
            or tensor attributes of the teacher; the features concatenate their flattened gradients.
        K: inner draws per example.
        p, q, design, sampler: the sampler (any core-protocol sampler object, e.g. the
            inverse CDF of uniform $p$ with :class:`~carv_core.quadrature.FixedGrid` or ``Systematic``); or
            the shorthand $p$, $q$, ``design``.
        weighting: $w(t)$, a preset name or a ``(T,)`` table.
        condition: per example (leading dim 1, shared without copying, or ``R``), or ``None``.
        common_random_numbers: every example sees the same $(t_k, \epsilon_k)$ (D-TRAK's
            per-timestep seeds), so differences between examples' features carry less noise.
        antithetic: $(\epsilon, -\epsilon)$ pairs along $K$.
        generator: ``torch.Generator``; uniforms first, then noise (as :func:`~carv_torch.draw_inner`).
        chunk_size: examples per vmap call (default: all $R$).
        project: a map ``(n, P) -> (n, k)`` applied to each chunk's features, e.g. TRAK's
            ``BasicProjector(...).project`` with ``model_id`` fixed.

    Example:
        >>> import torch
        >>> from carv_torch.teachers import GaussianMixtureTeacher
        >>> abar = torch.linspace(0.99, 0.05, 50, dtype=torch.float64)
        >>> mu = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
        >>> teacher = GaussianMixtureTeacher(mu, 1.0, abar)
        >>> x0 = torch.ones(3, 1, 2, 2, dtype=torch.float64)
        >>> est = attribution(teacher, x0, [mu], K=4, p=torch.full((50,), 0.02, dtype=torch.float64),
        ...                   generator=torch.Generator().manual_seed(0))
        >>> est.features.shape, est.t.shape
        (torch.Size([3, 4]), torch.Size([3, 4]))
    """
    _check_x0(x0)
    params = _check_params(params)
    if chunk_size is not None:
        chunk_size = as_int("chunk_size", chunk_size, minimum=1)
    if project is not None and not callable(project):
        raise TypeError(f"project must be a callable (n, P) -> (n, k) or None, got {type(project).__name__}")
    if not isinstance(common_random_numbers, (bool, np.bool_)):
        raise TypeError(f"common_random_numbers must be a bool, got {common_random_numbers!r}")
    abar = _teacher_abar(teacher)
    sampler = resolve_sampler(sampler, p, q, design, n_timesteps=abar.shape[0], device=x0.device)
    bindings = _bindings(teacher, params)
    if condition is not None and isinstance(condition, torch.Tensor) and \
            (condition.ndim == 0 or condition.shape[0] not in (1, x0.shape[0])):
        raise ValueError(f"condition must have leading dimension 1 or R = {x0.shape[0]}, got shape "
                         f"{tuple(condition.shape)}")
    with restoring(generator, x0.device):  # failure-atomic, as estimate
        draws = draw_inner(x0.shape[0], K, x0.shape[1:], sampler=sampler, antithetic=antithetic,
                           common=bool(common_random_numbers), generator=generator,
                           device=x0.device, dtype=x0.dtype)
        return _attribution(teacher, x0, params, bindings, draws, weighting, condition,
                            bool(common_random_numbers), chunk_size or x0.shape[0], project, abar)


def _check_pass(teacher, x0, draws: InnerDraws, condition, abar) -> None:
    # The teacher's output contract on all R K inputs (no grad): structure and finiteness.
    R, K = draws.t.shape
    with torch.no_grad():
        x_t, t = _noisy(x0, draws, abar)
        cond = _per_draw(condition, R, K, "condition")
        _finite(t, ("teacher.predict_noise", _predict(teacher, "teacher", x_t, t, cond), teacher))


def _attribution(teacher, x0, params, bindings, draws, weighting, condition, common, chunk,
                 project, abar) -> AttributionEstimate:
    R, K = draws.t.shape
    alpha_t, sigma_t = _noise_tables(abar, x0.dtype, x0.device)
    table = _weight_table(weighting, abar, include_alpha=False).to(device=x0.device, dtype=x0.dtype)
    values = tuple(v.detach() for v in params)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    cond_batched = isinstance(condition, torch.Tensor) and condition.shape[0] == R and R > 1

    def loss(vals, x0_r, t_r, w_r, eps_r, cond_r):
        # 1. x_t = alpha_t x0 + sigma_t eps for the example's K draws, 2. the teacher with
        # params substituted, 3. the per-draw losses and their importance-weighted mean.
        x_t = alpha_t[t_r].reshape(shape) * x0_r[None] + sigma_t[t_r].reshape(shape) * eps_r
        if cond_batched:
            cond_r = cond_r[None]
        with _substituted(bindings, vals), set_validate_args(False):
            eps_hat = _check_output("teacher.predict_noise",
                                    teacher.predict_noise(x_t, t_r, cond_r), x_t)
        ell = table[t_r] * (eps_hat - eps_r).pow(2).flatten(1).mean(-1)
        return (w_r * ell).mean(), ell

    draw_dim = None if common else 0
    per_example = torch.func.vmap(torch.func.grad(loss, has_aux=True),
                                  in_dims=(None, 0, draw_dim, draw_dim, draw_dim, 0 if cond_batched else None))
    feats, losses = [], []
    for a in range(0, R, chunk):
        b = min(a + chunk, R)
        rows = slice(0, 1) if common else slice(a, b)
        t_c, w_c, eps_c = draws.t[rows], draws.w[rows].to(x0.dtype), draws.eps[rows]
        if is_validating():
            sub = InnerDraws(draws.t[a:b], draws.w[a:b], draws.eps[a:b])
            _check_pass(teacher, x0[a:b], sub, condition if not cond_batched else condition[a:b], abar)
        if common:
            t_c, w_c, eps_c = t_c[0], w_c[0], eps_c[0]
        cond_c = condition[a:b] if cond_batched else condition
        grads, ell = per_example(values, x0[a:b].detach(), t_c, w_c, eps_c, cond_c)
        flat = torch.cat([g.reshape(b - a, -1) for g in grads], dim=1)
        feats.append(flat if project is None else project(flat))
        losses.append(ell.detach())
    return AttributionEstimate(torch.cat(feats), torch.cat(losses), draws.t, draws.w, K)
