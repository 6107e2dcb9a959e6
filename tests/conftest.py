"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def single_thread():
    """Run a module on one intra-op thread, then restore the count. Files of many tiny ops use it:
    on a busy 2-core machine OpenMP barriers cost 5-30x more than the second thread saves."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
