"""Case specs, carv_torch: the proposal objects of the guidance (Fixed, Oracle, Online, WeightHeuristic).

See :mod:`fuzz.cases` for the spec format and :mod:`fuzz.classify` for the verdicts."""

import numpy as np

from .cases import Catalogue
from .mutations import NAN


def proposal_object_cases(cat: Catalogue) -> None:
    import carv_torch as T

    tm = "carv_torch"

    # ----------------------------------------------------------------- proposal objects
    cat.add(
        tm,
        "FixedProposal",
        "q=nan",
        lambda ctx: T.FixedProposal(np.array([NAN, 0.5, 0.5])).pmf(np.full(3, 1 / 3), np.ones(3)),
        "error",
        ("q",),
    )
    cat.add(tm, "FixedProposal", "delta=nan", lambda ctx: T.FixedProposal(np.full(4, 0.25), NAN), "error",
            ("delta",))
    cat.add(
        tm,
        "FixedProposal.pmf",
        "q=short",
        lambda ctx: T.FixedProposal(np.full(3, 1 / 3)).pmf(np.full(4, 0.25), np.ones(4)),
        "error",
        ("q",),
    )
    cat.add(
        tm,
        "OracleProposal",
        "second_moment=str",
        lambda ctx: T.OracleProposal("abc").pmf(np.full(4, 0.25), np.ones(4)),
        "error",
        ("second_moment",),
    )
    cat.add(
        tm,
        "OracleProposal",
        "second_moment=nan",
        lambda ctx: T.OracleProposal([NAN, 1, 1, 1]).pmf(np.full(4, 0.25), np.ones(4)),
        "error",
        ("second_moment",),
    )
    cat.add(tm, "OracleProposal", "delta=str", lambda ctx: T.OracleProposal(np.ones(4), "0.1"), "error", ("delta",))
    cat.add(tm, "OnlineProposal", "n_bins=zero", lambda ctx: T.OnlineProposal(n_bins=0), "error", ("n_bins",))
    cat.add(tm, "OnlineProposal", "decay=one", lambda ctx: T.OnlineProposal(decay=1.0), "error", ("decay",))
    cat.add(tm, "OnlineProposal", "n_bins=np_int64",
            lambda ctx: T.OnlineProposal(n_bins=np.int64(4)).pmf(np.full(8, 1 / 8), np.ones(8)),
            "ok")
    cat.add(tm, "WeightHeuristicProposal", "delta=above_one", lambda ctx: T.WeightHeuristicProposal(2.0), "error",
            ("delta",))
    cat.add(tm, "as_proposal", "proposal=bogus", lambda ctx: T.as_proposal("oracle"), "error", ("proposal",))
    cat.add(tm, "as_proposal", "proposal=int", lambda ctx: T.as_proposal(5), "error", ("proposal",))
