"""Every row of the carv_torch table of docs/bad-input.md raises what it says (a test per row).

The table is the section after the heading ``## carv_torch``; its calls are evaluated with every
``carv_torch`` name, ``np``, ``torch`` and ``P`` (a float64 uniform pmf over 10 timesteps) in scope.
"""

import re
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import carv_torch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PAGE = Path(__file__).resolve().parents[2] / "docs" / "bad-input.md"
ROW = re.compile(r"^\| `(?P<call>.+)` \| `(?P<exc>\w+)` \| `(?P<msg>.+)` \|$")
ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "FloatingPointError": FloatingPointError}


def _rows():
    text = PAGE.read_text()
    assert "\n## carv_torch\n" in text, "docs/bad-input.md lost its carv_torch section"
    section = text.split("\n## carv_torch\n", 1)[1].split("\n## ", 1)[0]
    rows = [m.groupdict() for line in section.splitlines() if (m := ROW.match(line))]
    assert len(rows) >= 40, "the carv_torch bad-input table lost rows"
    return rows


@pytest.mark.parametrize("row", _rows(), ids=lambda r: r["call"][:60])
def test_torch_bad_input_row(row):
    ns = {name: getattr(carv_torch, name) for name in carv_torch.__all__}
    ns.update(np=np, torch=torch, P=torch.full((10,), 0.1, dtype=torch.float64))
    exc = ERRORS[row["exc"]]
    with pytest.raises(exc) as info:
        eval(row["call"], ns)  # noqa: S307 - the table is ours
    assert type(info.value) is exc
    assert row["msg"] in str(info.value), f"{row['call']!r} said: {info.value}"
