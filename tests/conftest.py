"""Test-wide settings.

OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin-wait between the many tiny
ops of tiny test models; on a busy 2-core machine that turned 0.1 s steps into seconds.
It must be set before torch is first imported, hence here; subprocesses inherit it.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
