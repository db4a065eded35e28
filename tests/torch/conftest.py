"""Fixtures for the torch backend's tests: one suite, parametrised over devices.

``device`` runs a test on the CPU and, when a GPU is present, on CUDA (the
CUDA case is skipped, not dropped, elsewhere). It is session-scoped so that
Hypothesis ``@given`` tests can use it.
"""

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(
    scope="session",
    params=[
        "cpu",
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                      reason="needs a CUDA device")),
    ],
)
def device(request):
    """The device a backend-parity test runs on."""
    return torch.device(request.param)

