import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Hundreds of tiny forwards: one intra-op thread is as fast on an idle machine and avoids the
    100x slowdown of spinning OpenMP threads on a shared, busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
