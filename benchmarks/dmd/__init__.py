r"""One-step distillation (DMD) on digits with a known density: does lower gradient variance help?

- :mod:`.mixture` — $p^\star$: a diagonal Gaussian mixture fitted to the 8×8 digits, with
  exact samples, exact $\log p^\star$ and the exact noisy scores (the real teacher);
- :mod:`.networks` — the tiny diffusers ``UNet2DModel`` used as the fake score and the
  one-step generator, and its denoising pre-training on $p^\star$ samples;
- :mod:`.distill` — the DMD2-style loop: the generator gradient through the library's
  hierarchical estimator, the fake score trained online on detached generator samples;
- :mod:`.variance` — $\operatorname{tr}\operatorname{Cov}$ of the generator-parameter gradient per
  arm, from repeated estimates at fixed parameters, and the measured costs;
- :mod:`.study` — the command that runs it and writes ``results/study.json``.
"""
