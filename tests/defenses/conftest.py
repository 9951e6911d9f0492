"""Data the defenses that need a public pool are tested on."""

import numpy as np
import pytest

from fedmia.data import load_dataset
from fedmia.defenses import ClientData


@pytest.fixture(scope="module")
def split():
    """100 members, a public pool of 300, and 300 held-out records that nothing trains on."""
    digits = load_dataset("digits")
    order = np.random.default_rng(0).permutation(len(digits.labels))
    members, public, held_out = order[:100], order[100:400], order[400:700]
    client = ClientData(0, digits.images[members], digits.labels[members], 10,
                        digits.images[public], digits.labels[public])
    return client, (digits.images[held_out], digits.labels[held_out])
