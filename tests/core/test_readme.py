"""The README's usage examples run as written (one shared namespace, in order)."""

import importlib.util
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    ns: dict = {}
    # The carv_torch example needs torch; the core ones must not.
    has_torch = importlib.util.find_spec("torch") is not None
    for block in blocks:
        if "import numpy as np, torch" in block and not has_torch:
            continue
        exec(compile(block, str(README), "exec"), ns)  # noqa: S102 - our own README
    assert ns["K"] == 8
    assert not ns["report"].unbiased
    if has_torch:
        assert ns["guidance"].last.estimate.t.shape == (2, 4)
