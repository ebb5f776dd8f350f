"""A fixture for the sparse-execution tests (a module, not a conftest.py: a second conftest
module would shadow ``from conftest import ...`` in other test folders)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    # The models here are tiny: one thread is faster, and steady on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
