import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parent.parent
FASHION_DIR = REPO.parent / "shared" / "datasets" / "fashion-mnist"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
