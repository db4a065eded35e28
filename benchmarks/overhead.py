r"""Per-step overhead of :class:`carv_torch.CARVGuidance` over a hand-written SDS step.

Both sides compute the same estimator at the same $(R, K)$ on the shipped text-to-3D
teacher (latents $4\times16\times16$, $R = 2$ renders, CFG scale
:data:`~benchmarks.text_to_3d.teacher.GUIDANCE_SCALE`):

$$ g_r = \frac1K\sum_k \tilde w_{rk}\,w(t_{rk})\,\big(\hat\epsilon(x_{t,rk}, t_{rk}, y) - \epsilon_{rk}\big),
   \qquad L = \tfrac{1}{2R}\lVert x - \mathrm{sg}(x - g)\rVert^2, $$

$w = 1 - \bar\alpha_t$ (``weighting="sds"``; times $\alpha_t$ with ``--include-alpha``),
$\tilde w = p/q$. The **baseline** is what a careful user writes by hand: threestudio's
SDS step generalised to $K$ draws per render, with

1. $t$ from ``torch.randint`` on $[20, 980]$ (uniform proposal, i.i.d. design), or a
   stratified inverse CDF $t = \min\{j : F_q(j) > (k + \xi)/K\}$ by ``torch.searchsorted``
   over a $q$ / $F_q$ / $p/q$ table precomputed once (weight-heuristic proposal
   $q = (1-\delta)\,\mathrm{normalise}(p\,w) + \delta p$, stratified design);
2. $\epsilon$ from ``torch.randn``, $x_t = \sqrt{\bar\alpha_t}\,x + \sqrt{1-\bar\alpha_t}\,\epsilon$;
3. ONE batched CFG teacher call on all $RK$ noisy latents (the same
   ``teacher.predict_noise``, so the teacher's work is identical);
4. the weighted mean over $K$, the surrogate loss and ``.backward()`` through $x$.

The **CARV** side is ``CARVGuidance(teacher, GuidanceConfig(...))(x, y, uncond,
rgb_as_latents=True)["loss_sds"].backward()``. $x$ is a leaf latent tensor (no VAE: the
stricter comparison); ``--encode`` instead renders images $3\times64\times64$ (leaf
tensors) that both sides encode with the teacher's VAE, differentiably.

The main columns run both sides with :func:`carv_torch.set_validate_args` ``(False)``
and the teacher's ``check_finite = False``; the ``validated`` column is CARV with both
on (the library's default). The contestants alternate in one loop (the order rotates
every round), so machine noise hits all of them; each time is one full step including
the backward pass (``time.perf_counter``), medians over ``--repeats`` rounds after a
warm-up. Before timing, :func:`check_same_gradient` asserts that, for the same generator
state, both sides give the same gradient in $x$ (for the i.i.d. setting with the baseline
drawing its $t$ by the inverse CDF of the same uniforms, the only way to share a stream
with CARV; ``randint``'s law is checked to be CARV's $p$).

Usage (a quiet machine; ``OMP_WAIT_POLICY=PASSIVE`` is set here if unset)::

    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.overhead --repeats 50
    python -m benchmarks.overhead --quick --out /tmp/overhead.json   # smoke, < 60 s

writes ``benchmarks/results/overhead.json`` (per configuration: both medians, their
IQRs, ``ratio`` = CARV/baseline with a bootstrap 95% interval over rounds, n; and the
machine) and prints the table of ratios. The target is ``ratio <= 1.02`` at every
configuration; ``target_decided`` says whether the interval settles it at this n.
``--null-unet`` (a diagnostic, not the target) swaps the UNet for $x_t/2$, so a step is
almost all overhead and ``overhead_us`` is resolved to a few microseconds.

The baseline also forms ``grad.norm()``: threestudio's guidance returns it, as CARV does.
It leaves out threestudio's ``torch.nan_to_num(grad)``, which CARV does not do either.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import torch  # noqa: E402

import carv_torch  # noqa: E402
from carv_torch import CARVGuidance, GuidanceConfig  # noqa: E402
from carv_torch.teachers import DiffusersTeacher  # noqa: E402

from .timing import (Contestant, argument_parser, compare, interleaved, machine_info,  # noqa: E402
                     results, summary)

R = 2
"""Upstream samples (renders) per step."""
KS = (1, 8, 32)
"""Inner draws per render, full run."""
KS_QUICK = (1, 8)
"""Inner draws per render, ``--quick``."""
SETTINGS = (("uniform", "iid"), ("weight", "stratified"))
"""(proposal, design) pairs measured at every $K$."""
TARGET = 1.02
"""Largest acceptable CARV/baseline ratio of median step times."""
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "overhead.json"
LATENT_SHAPE = (4, 16, 16)
IMAGE_SHAPE = (3, 64, 64)


# --------------------------------------------------------------------------- the hand-written step


class HandSDS:
    r"""threestudio's SDS step generalised to $K$ draws per render, written by hand.

    Every table is precomputed once on the teacher's device, as a hand-writer would:
    $\sqrt{\bar\alpha_t}$, $\sqrt{1 - \bar\alpha_t}$, $w(t)$, and for the weight-heuristic
    proposal $F_q$ and $p/q$ (folded into $w$, one table lookup per draw).

    Args:
        teacher: the :class:`~carv_torch.teachers.DiffusersTeacher`.
        proposal: ``"uniform"`` (``randint``) or ``"weight"`` (stratified inverse CDF).
        K: draws per render.
        guidance_scale, include_alpha, delta: as in :class:`~carv_torch.GuidanceConfig`.
        encode: encode images with the teacher's VAE first.
        min_step_percent, max_step_percent: threestudio's t range.
    """

    def __init__(self, teacher, proposal: str, K: int, *, guidance_scale: float, include_alpha: bool,
                 delta: float = 0.1, encode: bool = False, min_step_percent: float = 0.02,
                 max_step_percent: float = 0.98):
        self.teacher, self.K, self.scale, self.encode = teacher, K, float(guidance_scale), encode
        self.proposal = proposal
        abar = teacher.alphas_cumprod.to(torch.float64)
        T = abar.shape[0]
        dev, dt = teacher.device, teacher.dtype
        # threestudio: min_step = int(T * min_step_percent), t ~ randint(min_step, max_step + 1)
        self.min_step, self.max_step = int(T * min_step_percent), int(T * max_step_percent)
        self.sqrt_abar = abar.sqrt().to(device=dev, dtype=dt)
        self.sqrt_1m_abar = (1.0 - abar).sqrt().to(device=dev, dtype=dt)
        w = 1.0 - abar
        if include_alpha:
            w = w * abar.sqrt()
        self.w = w.to(device=dev, dtype=dt)
        p = torch.zeros(T, dtype=torch.float64)
        p[self.min_step:self.max_step + 1] = 1.0 / (self.max_step - self.min_step + 1)
        pw = p * w
        q = (1.0 - delta) * pw / pw.sum() + delta * p if proposal == "weight" else p
        self.cdf_p = torch.cumsum(p, 0).to(dev)
        self.cdf_q = torch.cumsum(q, 0).to(dev)
        ratio = torch.where(p > 0, p / q, torch.zeros_like(p))
        self.w_is = (w * ratio).to(device=dev, dtype=dt)  # w(t) p(t)/q(t)
        self.strata = torch.arange(K, dtype=torch.float64, device=dev)

    def draw_t(self, R: int, generator: torch.Generator, *, match_iid: bool = False) -> torch.Tensor:
        """``(R, K)`` timesteps; ``match_iid`` draws the uniform case by inverse CDF (for the check)."""
        dev, K = self.sqrt_abar.device, self.K
        if self.proposal == "uniform" and not match_iid:
            return torch.randint(self.min_step, self.max_step + 1, (R, K), generator=generator,
                                 device=dev)
        u = torch.rand((R, K), generator=generator, dtype=torch.float64, device=dev)
        cdf = self.cdf_p if self.proposal == "uniform" else self.cdf_q
        if self.proposal != "uniform":
            u = (self.strata + u) / K  # one jittered point per equal-q-mass stratum
        t = torch.searchsorted(cdf, u * cdf[-1], right=True)
        return t.clamp_(self.min_step, self.max_step)

    def __call__(self, rgb: torch.Tensor, condition, uncond, generator: torch.Generator,
                 *, match_iid: bool = False) -> torch.Tensor:
        """One step: returns the loss after ``loss.backward()``."""
        x = self.teacher.encode(rgb) if self.encode else rgb
        R, K = x.shape[0], self.K
        t = self.draw_t(R, generator, match_iid=match_iid)
        eps = torch.randn((R, K, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            a = self.sqrt_abar[t][..., None, None, None]
            s = self.sqrt_1m_abar[t][..., None, None, None]
            x_t = (a * x.detach()[:, None] + s * eps).reshape(R * K, *x.shape[1:])
            eps_hat = self.teacher.predict_noise(x_t, t.reshape(-1), condition, uncond=uncond,
                                                 guidance_scale=self.scale)
            grad = (self.w_is[t][..., None, None, None] * (eps_hat.view_as(eps) - eps)).mean(1)
        target = (x - grad).detach()
        loss = 0.5 * torch.nn.functional.mse_loss(x, target, reduction="sum") / R
        out = {"loss_sds": loss, "grad_norm": grad.norm()}  # what threestudio's guidance logs
        loss.backward()
        return out["loss_sds"]


class NullUNet(torch.nn.Module):
    r"""A stand-in UNet, $\hat\epsilon = x_t / 2$ (diagnostic ``--null-unet``).

    With it a step is almost all library overhead, so ``overhead_us`` is resolved far
    below the real teacher's timing noise. Not the target configuration.
    """

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.5, dtype=dtype), requires_grad=False)

    def forward(self, sample, timestep, class_labels=None):
        return SimpleNamespace(sample=sample * self.scale)


def make_guidance(teacher, proposal: str, design: str, K: int, *, guidance_scale: float,
                  include_alpha: bool, seed: int = 0) -> CARVGuidance:
    """The CARV side at one configuration."""
    cfg = GuidanceConfig(proposal=proposal, sampler=design, K=K, guidance_scale=guidance_scale,
                         include_alpha=include_alpha, weighting="sds", seed=seed)
    return CARVGuidance(teacher, cfg)


def carv_step(guidance: CARVGuidance, rgb, condition, uncond, *, encode: bool,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """One CARV step: returns ``loss_sds`` after ``.backward()``."""
    out = guidance(rgb, condition, uncond, rgb_as_latents=not encode, generator=generator)
    loss = out["loss_sds"]
    loss.backward()
    return loss


# --------------------------------------------------------------------------- the same estimator


def _leaf(shape, seed: int, dtype, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((R, *shape), generator=g, dtype=dtype).to(device).requires_grad_(True)


def check_same_gradient(teacher, condition, uncond, *, proposal: str, design: str, K: int,
                        guidance_scale: float, include_alpha: bool, encode: bool, seed: int = 123,
                        rtol: float = 1e-4) -> float:
    r"""Assert that CARV and the hand-written step give the same $\nabla_x L$ from one generator state.

    Both start from ``torch.Generator().manual_seed(seed)``; CARV draws its uniforms and
    then its noise, and so does the hand-written step (the i.i.d. case by the inverse CDF
    of the same uniforms, as ``randint`` cannot share CARV's stream). Returns the largest
    deviation relative to the largest gradient entry.
    """
    guidance = make_guidance(teacher, proposal, design, K, guidance_scale=guidance_scale,
                             include_alpha=include_alpha)
    hand = HandSDS(teacher, proposal, K, guidance_scale=guidance_scale, include_alpha=include_alpha,
                   delta=guidance.config.delta, encode=encode)
    lo, hi = guidance.step_range()
    if (lo, hi) != (hand.min_step, hand.max_step):
        raise AssertionError(f"randint's range [{hand.min_step}, {hand.max_step}] is not CARV's "
                             f"support [{lo}, {hi}]")
    p, q = guidance.pmfs()
    for name, ours, theirs in (("F_q", hand.cdf_q, torch.cumsum(q, 0)),
                               ("w p/q", hand.w_is.double(),
                                guidance.objective.weights * torch.where(p > 0, p / q, 0 * p))):
        if not torch.allclose(ours, theirs.to(ours), rtol=1e-6, atol=1e-12):
            raise AssertionError(f"the hand-written {name} table differs from CARV's")
    shape = IMAGE_SHAPE if encode else LATENT_SHAPE
    grads, losses = [], []
    for side in ("carv", "hand"):
        x = _leaf(shape, seed, teacher.dtype, teacher.device)
        gen = torch.Generator(device=teacher.device).manual_seed(seed)
        if side == "carv":
            loss = carv_step(guidance, x, condition, uncond, encode=encode, generator=gen)
        else:
            loss = hand(x, condition, uncond, gen, match_iid=True)
        grads.append(x.grad.detach().clone())
        losses.append(float(loss.detach()))
    scale = float(grads[0].abs().max())
    err = float((grads[0] - grads[1]).abs().max()) / scale
    if not err <= rtol or abs(losses[0] - losses[1]) > rtol * abs(losses[0]):
        raise AssertionError(f"CARV and the hand-written step disagree at proposal={proposal}, "
                             f"design={design}, K={K}: gradient rel. error {err:.3g}, losses "
                             f"{losses[0]!r} vs {losses[1]!r}")
    return err


def measure(teacher, condition, uncond, *, proposal: str, design: str, K: int, repeats: int,
            warmup: int, guidance_scale: float, include_alpha: bool, encode: bool) -> dict:
    """Baseline, CARV and CARV with validation at one configuration, interleaved."""
    guidance = make_guidance(teacher, proposal, design, K, guidance_scale=guidance_scale,
                             include_alpha=include_alpha)
    validated = make_guidance(teacher, proposal, design, K, guidance_scale=guidance_scale,
                              include_alpha=include_alpha)
    hand = HandSDS(teacher, proposal, K, guidance_scale=guidance_scale, include_alpha=include_alpha,
                   delta=guidance.config.delta, encode=encode)
    if teacher.max_batch_size != guidance.config.max_batch_size:  # the same UNet chunks on both sides
        raise ValueError(f"teacher.max_batch_size = {teacher.max_batch_size} but the guidance runs "
                         f"{guidance.config.max_batch_size}")
    gen = torch.Generator(device=teacher.device).manual_seed(0)
    x = _leaf(IMAGE_SHAPE if encode else LATENT_SHAPE, 0, teacher.dtype, teacher.device)

    def flags(on: bool):
        def setup():
            carv_torch.set_validate_args(on)
            teacher.check_finite = on
            x.grad = None
        return setup

    contestants = [
        Contestant("baseline", flags(False), lambda: hand(x, condition, uncond, gen)),
        Contestant("carv", flags(False), lambda: carv_step(guidance, x, condition, uncond, encode=encode)),
        Contestant("carv_validated", flags(True),
                   lambda: carv_step(validated, x, condition, uncond, encode=encode)),
    ]
    times = interleaved(contestants, repeats, warmup)
    return {"proposal": proposal, "design": design, "R": R, "K": K,
            "baseline": summary(times["baseline"]), "carv": summary(times["carv"]),
            "carv_validated": summary(times["carv_validated"]),
            **compare(times["carv"], times["baseline"], TARGET),
            "ratio_validated": statistics.median(times["carv_validated"]) / statistics.median(times["baseline"])}


def format_table(rows) -> str:
    """The ratios as a fixed-width text table."""
    head = (f"{'proposal/design':<20}{'K':>4}{'baseline ms':>13}{'CARV ms':>10}{'ratio':>8}"
            f"{'95% CI':>16}{'validated':>11}{'paired':>8}{'+us':>7}{'n':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lo, hi = r["ratio_ci95"]
        lines.append(f"{r['proposal'] + '/' + r['design']:<20}{r['K']:>4}"
                     f"{1e3 * r['baseline']['median_s']:>13.2f}{1e3 * r['carv']['median_s']:>10.2f}"
                     f"{r['ratio']:>8.3f}{f'[{lo:.3f}, {hi:.3f}]':>16}{r['ratio_validated']:>11.3f}"
                     f"{r['ratio_paired_median']:>8.3f}{r['overhead_us']:>7.0f}{r['carv']['n']:>5}")
    return "\n".join(lines)


def run(*, repeats: int, warmup: int, Ks, encode: bool, include_alpha: bool, threads: int,
        weights_dir=None, null_unet: bool = False) -> dict:
    """Check the two sides agree, then time every configuration; returns the results dict."""
    from benchmarks.text_to_3d.teacher import GUIDANCE_SCALE, load_teacher, null_condition, teacher_condition

    torch.set_num_threads(threads)
    info = machine_info(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no shipped weights: same architecture
        teacher = load_teacher(weights_dir)
    if null_unet:
        teacher = DiffusersTeacher(NullUNet(teacher.dtype).to(teacher.device), teacher.scheduler,
                                   teacher.vae, max_batch_size=teacher.max_batch_size)
    condition, uncond = teacher_condition(0), null_condition()
    common = dict(guidance_scale=GUIDANCE_SCALE, include_alpha=include_alpha, encode=encode)
    was_validating, was_checking = carv_torch.is_validating(), teacher.check_finite
    rows, checks = [], []
    try:
        for proposal, design in SETTINGS:
            checks.append({"proposal": proposal, "design": design,
                           "max_rel_grad_error": check_same_gradient(
                               teacher, condition, uncond, proposal=proposal, design=design,
                               K=max(Ks), **common)})
        for K in Ks:
            for proposal, design in SETTINGS:
                rows.append(measure(teacher, condition, uncond, proposal=proposal, design=design,
                                    K=K, repeats=repeats, warmup=warmup, **common))
    finally:
        carv_torch.set_validate_args(was_validating)
        teacher.check_finite = was_checking
    return results(
        "median seconds per full SDS step (incl. backward); ratio = CARV / hand-written baseline "
        "at the same (R, K); validation off on both sides except carv_validated", TARGET, rows,
        {"R": R, "Ks": list(Ks), "repeats": repeats, "warmup": warmup, "encode": encode,
         "include_alpha": include_alpha, "weighting": "sds", "null_unet": null_unet,
         "guidance_scale": GUIDANCE_SCALE, "shape": list(IMAGE_SHAPE if encode else LATENT_SHAPE)},
        info, same_gradient_checks=checks)


def main(argv=None) -> dict:
    parser, add = argument_parser("benchmarks.overhead", __doc__)
    add("--repeats", type=int, default=None,
        help="timed calls per contestant and configuration (default 50; 4 with --quick)")
    add("--warmup", type=int, default=None, help="untimed rounds first (default 5; 2 with --quick)")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"results json (default {DEFAULT_OUT})")
    add("--quick", action="store_true", help="smoke mode: K = 1 and 8, few repeats (< 60 s)")
    add("--encode", action="store_true", help="render images 3x64x64 and VAE-encode them on both sides")
    add("--include-alpha", action="store_true",
        help="multiply the residual by alpha_t on both sides (default: threestudio's w(t))")
    add("--null-unet", action="store_true",
        help="diagnostic: replace the UNet by x/2, so a step is almost all overhead")
    add("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    add("--weights-dir", type=Path, default=None, help="teacher weights (default: shipped)")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (4 if args.quick else 50)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    if repeats < 1 or warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if repeats < 30 and not args.quick:
        warnings.warn(f"--repeats {repeats} < 30: medians are noisy (the full run uses >= 30)",
                      UserWarning, stacklevel=2)
    out = run(repeats=repeats, warmup=warmup, Ks=KS_QUICK if args.quick else KS,
              encode=args.encode, include_alpha=args.include_alpha, threads=args.threads,
              weights_dir=args.weights_dir, null_unet=args.null_unet)
    out["settings"]["quick"] = args.quick
    out["settings"]["argv"] = list(argv) if argv is not None else sys.argv[1:]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(format_table(out["rows"]))
    missed = sum(not r["meets_target"] for r in out["rows"])
    undecided = sum(not r["target_decided"] for r in out["rows"])
    print(f"target ratio <= {TARGET}: " + ("met at every configuration" if not missed else
          f"missed at {missed} of {len(out['rows'])} configurations")
          + (f" ({undecided} not resolved by the 95% CI at n = {repeats})" if undecided else "")
          + f"; wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
