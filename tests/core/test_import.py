"""carv_core is the numpy reference: importing it never imports torch."""

import subprocess
import sys

import carv_core


def test_core_import_does_not_import_torch():
    code = "import sys, carv_core, carv_core.testing; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_exported():
    for name in carv_core.__all__:
        assert hasattr(carv_core, name), name
    assert len(set(carv_core.__all__)) == len(carv_core.__all__)
