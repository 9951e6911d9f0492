"""Seeds derived from the run's seed: one independent stream per purpose.

Two random choices that share a seed are correlated (the same draws reused), so every purpose
gets its own seed, derived with numpy's `SeedSequence` from the run seed and integer keys
(client, round, stream), never by adding small offsets that can collide with a neighbour's.
"""

from __future__ import annotations

import numpy as np
import torch

#: The independent random streams a client's noisy round draws from.
STREAMS = {"sampling": 1, "noise": 2, "probes": 3, "mixing": 4}


def round_seed(base_seed: int, *keys: int) -> int:
    """A seed for one (client, round, ...) that does not collide with its neighbours'."""
    return int(np.random.SeedSequence([base_seed, *keys]).generate_state(1)[0])


def stream_generator(seed: int, stream: str, device: str = "cpu") -> torch.Generator:
    """A torch generator for one named stream of `seed` (see `STREAMS`)."""
    return torch.Generator(device=device).manual_seed(round_seed(seed, STREAMS[stream]))
