"""Derived seeds: deterministic, and distinct across streams, clients and rounds."""

import torch

from fedmia.seeding import STREAMS, round_seed, stream_generator


def test_streams_of_one_seed_are_deterministic_and_distinct():
    draws = {name: torch.rand(8, generator=stream_generator(5, name)) for name in STREAMS}
    again = {name: torch.rand(8, generator=stream_generator(5, name)) for name in STREAMS}
    assert all(torch.equal(draws[name], again[name]) for name in STREAMS)
    values = [tuple(d.tolist()) for d in draws.values()]
    assert len(set(values)) == len(values)


def test_neighbouring_keys_do_not_collide_as_offsets_would():
    seeds = {round_seed(0, client, server_round) for client in range(50) for server_round in range(50)}
    assert len(seeds) == 2500
    assert round_seed(1, 0) != round_seed(0, 1)
