"""Hypothesis profiles: derandomized for CI, exploratory for local runs.

CI (the ``CI`` environment variable set) uses ``ci``: derandomized, so a run is
reproducible. Locally ``dev`` explores more examples with fresh randomness.
Choose explicitly with ``HYPOTHESIS_PROFILE=ci|dev|thorough``.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's torch work on one thread: tiny tensors gain nothing from threads, and
    spinning threads suffer badly on a busy machine. Use with ``pytestmark``."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
