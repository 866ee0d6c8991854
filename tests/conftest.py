"""Test-wide settings.

OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin-wait between the many tiny
ops of tiny test models; on a busy 2-core machine that turned 0.1 s steps into seconds.
It must be set before torch is first imported, hence here; subprocesses inherit it.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine each parallel
    region waits for a descheduled thread: run a module single-threaded, then restore.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
