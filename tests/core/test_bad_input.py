"""Every row of docs/bad-input.md raises what the table says (a test per row)."""

import re
from pathlib import Path

import numpy as np
import pytest

import carv_core

TABLE = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
ROW = re.compile(r"^\| `(?P<call>.+)` \| `(?P<exc>\w+)` \| `(?P<msg>.+)` \|$")


def _rows():
    core = TABLE.read_text().split("\n## carv_torch\n", 1)[0]  # the torch table has its own test
    rows = [m.groupdict() for line in core.splitlines() if (m := ROW.match(line))]
    assert len(rows) >= 40, "the bad-input table lost rows"
    return rows


def _namespace():
    ns = {name: getattr(carv_core, name) for name in carv_core.__all__}
    ns["np"] = np
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is part of the test environment
        torch = None
    ns["torch"] = torch
    ns["p"] = carv_core.uniform_timesteps(10)
    ns["q"] = ns["p"]
    ns["s"] = carv_core.make_schedule("linear", 10, 1e-4, 0.02)
    return ns


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["call"][:60])
def test_bad_input_row(row):
    ns = _namespace()
    if "torch." in row["call"] and ns["torch"] is None:
        pytest.skip("torch not installed")
    exc = {"ValueError": ValueError, "TypeError": TypeError}[row["exc"]]
    with pytest.raises(exc) as info:
        eval(row["call"], ns)  # noqa: S307 - the table is ours
    assert type(info.value) is exc
    assert row["msg"] in str(info.value), f"{row['call']!r} said: {info.value}"


def test_sobol_non_power_of_two_warns():
    with pytest.warns(UserWarning, match="power of 2"):
        carv_core.draw_uniforms("sobol", 1, 3, rng=0)
