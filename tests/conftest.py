import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
# CI clones the repository next to a read-only copy of shared/.
SHARED = REPO.parent / "shared"
FLICKR8K_1K = SHARED / "data" / "flickr8k-1k"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end test (seconds to minutes); still runs in CI")


@pytest.fixture(scope="session")
def flickr8k_dir():
    if not FLICKR8K_1K.is_dir():
        pytest.skip(f"{FLICKR8K_1K} is not present")
    return FLICKR8K_1K
