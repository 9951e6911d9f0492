"""What the attack tests share: the digits dataset, loaded once per session."""

import pytest

from fedmia.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")
