"""The figure script regenerates the committed figures and table, deterministically."""

from __future__ import annotations

import pathlib
import struct
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIGURES = ROOT / "docs" / "figures"
GENERATED = ["core_example_table.md", "idea.png", "variance_vs_k.png", "ecm_vs_cost_ratio.png",
             "proposal_shapes.png"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _run(out: pathlib.Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "scripts" / "make_figures.py"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(out),
                               "MPLCONFIGDIR": str(out / ".mpl")})
    assert proc.returncode == 0, proc.stderr


def test_figures_are_deterministic_and_match_the_committed_ones(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    _run(first)
    _run(second)
    for name in GENERATED:
        a, b = (first / name).read_bytes(), (second / name).read_bytes()
        assert a == b, f"{name} differs between two runs"
        committed = (FIGURES / name).read_bytes()
        if name.endswith(".md"):
            # Exact numbers: the committed table must be what the script computes now.
            assert committed == a, f"docs/figures/{name} is stale: run `make figures`"
        else:
            # PNG bytes may differ across matplotlib/freetype versions; the shape may not.
            assert _png_size(committed) == _png_size(a), f"docs/figures/{name} is stale: run `make figures`"
