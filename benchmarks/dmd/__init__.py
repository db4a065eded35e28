r"""One-step distillation (DMD) on digits with a known density: does lower gradient variance help?

- :mod:`.mixture` — $p^\star$: a diagonal Gaussian mixture fitted to the 8×8 digits, with
  exact samples, exact $\log p^\star$ and the exact noisy scores (the exact real teacher);
- :mod:`.networks` — the tiny diffusers ``UNet2DModel`` used as fake score, one-step
  generator and (frozen) trained real teacher, and its denoising pre-training on $p^\star$;
- :mod:`.teacher` — that denoiser, shipped (weights, checksums, retraining command), and
  its score error against the exact score;
- :mod:`.distill` — the DMD2-style loop: the generator gradient through the library's
  hierarchical estimator (or the guidance, for ``K="auto"``), the fake score trained online
  on detached generator samples;
- :mod:`.variance` — $\operatorname{tr}\operatorname{Cov}$ of the generator-parameter gradient per
  arm, from repeated estimates at fixed parameters, and the measured costs;
- :mod:`.classifier`, :mod:`.quality` — sample quality against $p^\star$ without Inception
  (exact $\log p^\star$, mode coverage, Fréchet, sliced Wasserstein, a digits-classifier FID),
  with bootstrap replicates;
- :mod:`.end_to_end` — quality against compute per arm, paired by seed, and the
  noise-scale diagnostic's prediction against the measured speed-up;
- :mod:`.study` — the command that runs it and writes ``results/study.json``;
  :mod:`.report`, :mod:`.figures` — the docs page and figures drawn from that JSON.
"""
