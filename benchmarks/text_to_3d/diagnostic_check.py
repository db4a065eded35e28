r"""Does the noise-scale diagnostic predict the text-to-3D study's end-to-end gain?

    python -m benchmarks.text_to_3d.diagnostic_check [--study results/study.json]

Reads the committed study (no new runs). Per checkpoint (early / middle / late): the
parameter-space components $\sigma_B^2$, $\sigma_W^2$ (uniform i.i.d. for the baseline,
IS + stratified for CARV), the fitted costs $c_0 + R(c_u + K c_d)$, and
$\lVert G\rVert^2$ = the reference gradient's squared norm minus its own variance. From them,
:mod:`carv_core.diagnostics`' model predicts the speed-up $S$ of the end-to-end CARV
configuration over the baseline (and its ECM limit). Measured: for each (prompt, seed)
pair of the end-to-end runs and each metric, the time the baseline needs to reach a
fraction $f$ of its own final gain over the time CARV needs, $f \in \{0.5, 0.75, 0.9\}$
(0 when CARV never gets there); medians over pairs with bootstrap 95 % intervals.

Writes ``results/diagnostic_check.json`` and the table ``docs/figures/diagnostic_text_to_3d.md``
(included by the maths page on the noise scale).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from carv_core.allocation import cost, predicted_variance
from carv_core.diagnostics import speedup

from .end_to_end import time_to_reach

HERE = Path(__file__).resolve().parent
STUDY = HERE / "results" / "study.json"
OUT = HERE / "results" / "diagnostic_check.json"
TABLE = HERE.parents[1] / "docs" / "figures" / "diagnostic_text_to_3d.md"
FRACTIONS = (0.5, 0.75, 0.9)
METRICS = {"psnr": 2, "iou": 3, "prob": 4}

__all__ = ["predictions", "measured_speedups", "run", "table"]


def predictions(study: dict) -> list[dict]:
    r"""Per checkpoint: $\mathcal B$ of the baseline, and $S$ and the ECM limit of CARV's end-to-end configuration."""
    m = study["e2e"]["carv_method"]
    out = []
    for c in study["checkpoints"]:
        g = c["reference"]["grad_norm2"] - c["reference"]["var_ref"]
        f = c["cost_fit"]
        uni, carv = c["components"], c["components_is_strat"]
        v_b = predicted_variance(2, 1, max(uni["sigma_b2"], 0.0), uni["sigma_w2"])
        v_c = predicted_variance(m["R"], m["K"], max(carv["sigma_b2"], 0.0), carv["sigma_w2"])
        c_b = f["overhead"] + cost(2, 1, f["c_u"], f["c_d"])
        c_c = f["overhead"] + cost(m["R"], m["K"], f["c_u"], f["c_d"])
        out.append({"label": c["label"], "step": c["step"], "grad_sq_norm": g, "noise_scale": v_b / g,
                    "speedup": speedup(v_b, c_b, v_c, c_c, g), "ecm_limit": v_b * c_b / (v_c * c_c),
                    "cost_ratio": c_b / c_c})
    return out


def _bootstrap_median(x: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    meds = np.median(rng.choice(x, size=(n, x.size), replace=True), axis=1)
    return float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def measured_speedups(study: dict, seed: int = 0) -> dict:
    """``{metric: {fraction: {median, lo, hi, n, values}}}`` from the paired end-to-end runs."""
    runs = study["e2e"]["runs"]
    base_name, carv_name = study["e2e"]["summary"]["methods"]
    pairs = {}
    for r in runs:
        pairs.setdefault((r["prompt"], r["seed"]), {})[r["method"]] = r["curve"]
    rng = np.random.default_rng(seed)
    out = {}
    for metric, col in METRICS.items():
        out[metric] = {}
        for frac in FRACTIONS:
            vals = []
            for pair in pairs.values():
                b, c = pair[base_name], pair[carv_name]
                start, final = b[0][col], b[-1][col]
                if not final > start:
                    continue                   # no gain to reach (e.g. the classifier is sure from step 0)
                level = start + frac * (final - start)
                t_b = time_to_reach([x[0] for x in b], [x[col] for x in b], level)
                t_c = time_to_reach([x[0] for x in c], [x[col] for x in c], level)
                if t_b > 0:
                    vals.append(0.0 if t_c != t_c else t_b / max(t_c, 1e-9))
            v = np.asarray(vals)
            lo, hi = _bootstrap_median(v, rng) if v.size else (math.nan, math.nan)
            out[metric][str(frac)] = {"median": float(np.median(v)) if v.size else math.nan, "lo": lo, "hi": hi,
                                      "n": int(v.size), "values": v.tolist()}
    return out


def table(rec: dict) -> str:
    """The markdown table of predicted against measured speed-ups."""
    L = ["| checkpoint | noise scale \\(\\mathcal B\\) (baseline) | predicted \\(S\\) | ECM limit |",
         "|---|---|---|---|"]
    for p in rec["predicted"]:
        L.append(f"| {p['label']} (step {p['step']}) | {p['noise_scale']:.1f} | {p['speedup']:.2f} | "
                 f"{p['ecm_limit']:.2f} |")
    L += ["", "| metric | measured speed-up to 50 % of the baseline's gain | to 75 % | to 90 % |",
          "|---|---|---|---|"]
    for metric, by_f in rec["measured"].items():
        cells = [f"{v['median']:.2f} [{v['lo']:.2f}, {v['hi']:.2f}] (n = {v['n']})" for v in by_f.values()]
        L.append(f"| {metric} | " + " | ".join(cells) + " |")
    L.append("")
    L.append(f"Predicted from `{rec['study']}` ({rec['carv_method']} vs the baseline); measured: median over "
             "(prompt, seed) pairs of the baseline's time to a level over CARV's, bootstrap 95 % interval; "
             "0 where CARV never reached the level. `python -m benchmarks.text_to_3d.diagnostic_check`.")
    return "\n".join(L) + "\n"


def run(study_path: Path = STUDY, out: Path | None = OUT, table_path: Path | None = TABLE) -> dict:
    study = json.loads(Path(study_path).read_text())
    rec = {"study": Path(study_path).name, "carv_method": study["e2e"]["carv_method"]["name"],
           "predicted": predictions(study), "measured": measured_speedups(study)}
    if out is not None:
        Path(out).write_text(json.dumps(rec, indent=1) + "\n")
    if table_path is not None:
        Path(table_path).write_text(table(rec))
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default=str(STUDY))
    args = ap.parse_args(argv)
    rec = run(Path(args.study))
    print(table(rec))


if __name__ == "__main__":
    main()
