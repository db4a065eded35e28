"""The fuzz catalogue of the public API (design.md §4, *Contracts*), run by ``fuzz_catalogue.py``.

Modules, one concept each:

* :mod:`fuzz.cases`       -- :class:`~fuzz.cases.Case`, the :class:`~fuzz.cases.Catalogue` that specs fill
  (``add``/``sweep``), :class:`~fuzz.cases.Lazy` values, what a case expects;
* :mod:`fuzz.mutations`   -- the mutation lists of one argument (reals, ints, pmfs, arrays, tensors);
* :mod:`fuzz.fixtures`    -- small teachers, images and user samplers of the torch specs;
* ``fuzz.specs_core_*``, ``fuzz.specs_torch_*`` -- the case specs, one area of the API each;
* :mod:`fuzz.values`      -- state snapshots, the non-finite search, argument names in messages;
* :mod:`fuzz.limits`      -- the per-case time limit and the process's memory limit;
* :mod:`fuzz.classify`    -- running one case and its category (clear / obscure / silent / hang /
  too-large / ok: the definitions are in that module's docstring);
* :mod:`fuzz.runner`      -- building the catalogue from the specs, running it, summaries;
* :mod:`fuzz.cli`         -- the command line (``--json --label --commit --known --filter --verbose --mem-gib``).
"""
