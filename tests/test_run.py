"""Run-level helpers: seeded client sampling."""

from fedmia.run import sample_clients


def test_seeded_sampling_picks_the_same_clients_per_round():
    assert sample_clients(5, 5, 0, 1) == [0, 1, 2, 3, 4]
    picks = [sample_clients(20, 4, 7, r) for r in range(1, 6)]
    assert picks == [sample_clients(20, 4, 7, r) for r in range(1, 6)]
    assert all(len(set(p)) == 4 for p in picks) and len({tuple(p) for p in picks}) > 1
