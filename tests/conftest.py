import os

# One intra-op thread: on a 2-core machine, OpenMP threads that spin-wait for a busy core can
# slow small tensor ops a hundredfold (measured: 1 s -> 170 s for a tiny training test).
# Subprocesses started by tests (torchrun, bana) inherit this.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
