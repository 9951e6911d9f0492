"""The privacy split and client partitioning."""

import json
import warnings

import numpy as np
import pytest

from fedmia.data import (
    PartitionSpec,
    PrivacySplit,
    SplitFractions,
    load_dataset,
    make_privacy_split,
    partition_indices,
)
from fedmia.errors import FedmiaError

PARTITIONS = ["iid", "dirichlet:0.5", "classes:2"]


@pytest.fixture(scope="module")
def labels():
    return load_dataset("digits").labels


#: 1,000 samples sorted by label: a pool order that partitioners must not follow.
SORTED_LABELS = np.repeat(np.arange(10), 100)


def pools(split: PrivacySplit) -> dict[str, np.ndarray]:
    named = {f"client{k}": part for k, part in enumerate(split.clients)}
    return {**named, "nonmembers": split.nonmembers, "population": split.population, "test": split.test}


def split_with(labels, partition: str, clients: int = 10, seed: int = 0) -> PrivacySplit:
    return make_privacy_split(labels, clients, PartitionSpec.parse(partition), seed=seed)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_pools_are_disjoint_sized_by_the_fractions_and_cover_the_pool(labels, partition):
    split = split_with(labels, partition)
    everything = np.concatenate(list(pools(split).values()))
    assert len(everything) == len(set(everything.tolist())), "pools overlap"
    n = len(labels)
    assert everything.min() >= 0 and everything.max() < n
    for pool in (split.nonmembers, split.population, split.test):
        assert len(pool) == int(0.2 * n)
    assert len(split.members) == int(0.4 * n), "every member-pool sample goes to a client"
    assert n - len(everything) <= 3, "only the rounding of the four fractions is left over"
    assert all(np.array_equal(part, np.sort(part)) for part in split.clients)


def test_non_member_population_and_test_pools_are_stratified_by_label(labels):
    split = split_with(labels, "iid", clients=4)
    overall = np.bincount(labels) / len(labels)
    for pool in (split.nonmembers, split.population, split.test):
        assert np.abs(np.bincount(labels[pool], minlength=10) / len(pool) - overall).max() < 0.01


@pytest.mark.parametrize("partition", PARTITIONS)
def test_split_is_deterministic_for_a_seed_and_changes_with_it(labels, partition):
    first, again, other = (split_with(labels, partition, 5, seed) for seed in (1, 1, 2))
    assert first.to_dict() == again.to_dict()
    for name, pool in pools(first).items():
        assert not np.array_equal(pool, pools(other)[name]), f"{name} ignores the seed"


def test_split_round_trips_through_its_json_manifest(labels):
    split = split_with(labels, "dirichlet:0.5", clients=4)
    manifest = json.loads(json.dumps(split.to_dict()))
    restored = PrivacySplit.from_dict(manifest)
    assert restored.fractions == split.fractions
    assert pools(restored).keys() == pools(split).keys()
    assert all(np.array_equal(a, b) and b.dtype == np.int64
               for a, b in zip(pools(split).values(), pools(restored).values()))


def test_the_manifest_is_a_copy_of_the_split(labels):
    split = split_with(labels, "iid", clients=2)
    split.to_dict()["fractions"]["members"] = 0.9
    assert split.fractions.members == 0.4


def test_a_manifest_with_overlapping_pools_is_refused(labels):
    manifest = split_with(labels, "iid", clients=2).to_dict()
    manifest["test"].append(manifest["clients"][0][0])
    with pytest.raises(FedmiaError, match="overlap"):
        PrivacySplit.from_dict(manifest)


def test_iid_clients_sizes_differ_by_at_most_one(labels):
    sizes = [len(part) for part in split_with(labels, "iid", clients=7).clients]
    assert max(sizes) - min(sizes) <= 1


def test_iid_clients_see_every_label_even_when_the_pool_is_sorted_by_label():
    split = split_with(SORTED_LABELS, "iid")
    assert all(len(np.unique(SORTED_LABELS[part])) >= 8 for part in split.clients)


@pytest.mark.parametrize("data", ["digits", "sorted"])
def test_classes_k_gives_each_client_exactly_k_labels(labels, data):
    pool_labels = labels if data == "digits" else SORTED_LABELS
    for k in (1, 2, 3):
        split = split_with(pool_labels, f"classes:{k}")
        assert [len(np.unique(pool_labels[part])) for part in split.clients] == [k] * 10


def test_small_dirichlet_alpha_is_more_skewed_than_large_alpha(labels):
    def mean_label_entropy(alpha: float) -> float:
        entropies = []
        for part in split_with(labels, f"dirichlet:{alpha}").clients:
            p = np.bincount(labels[part], minlength=10) / len(part)
            entropies.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        return float(np.mean(entropies))

    skewed, balanced = mean_label_entropy(0.1), mean_label_entropy(100.0)
    assert skewed < balanced - 0.5 and balanced > 0.95 * np.log(10)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_partitions_keep_each_index_with_its_own_label(partition):
    """Pool indices that are not 0..n-1 (every other sample here) must stay paired with their
    labels through the partitioner's shuffling: classes:1 on them gives one label per client.
    (With fewer clients than classes, classes:K leaves some classes to no client.)"""
    all_labels = np.repeat(np.arange(10), 40)
    pool = np.arange(0, 400, 2)
    parts = partition_indices(pool, all_labels[pool], 5, PartitionSpec.parse(partition), seed=3)
    assigned = sorted(np.concatenate(parts).tolist())
    assert set(assigned) <= set(pool.tolist()) and len(assigned) == len(set(assigned))
    if not partition.startswith("classes"):
        assert assigned == pool.tolist()
    parts = partition_indices(pool, all_labels[pool], 5, PartitionSpec.parse("classes:1"), seed=3)
    assert all(len(np.unique(all_labels[part])) == 1 for part in parts)


def test_tiny_pools_with_many_classes_still_split():
    many_classes = np.repeat(np.arange(50), 2)
    split = split_with(many_classes, "iid", clients=2)
    everything = np.concatenate(list(pools(split).values()))
    assert len(everything) == len(set(everything.tolist())) == 100


@pytest.mark.parametrize("text", ["dirichlet:-1", "dirichlet:0", "dirichlet:", "dirichlet:inf",
                                  "dirichlet:nan", "classes:0", "classes:-2", "classes:2.5",
                                  "classes:x", "foo", "iid:3", ""])
def test_bad_partition_strings_are_user_errors(text):
    with pytest.raises(FedmiaError, match="partition"):
        PartitionSpec.parse(text)


def test_partition_spec_prints_as_it_parses():
    for text in ("iid", "dirichlet:0.5", "classes:3"):
        assert str(PartitionSpec.parse(text)) == text


def test_more_clients_than_member_samples_is_a_user_error(labels):
    with pytest.raises(FedmiaError, match="clients"):
        split_with(labels, "iid", clients=5000)
    with pytest.raises(FedmiaError, match="5 clients but only 4 member samples"):
        partition_indices(np.arange(4), np.arange(4), 5, PartitionSpec.parse("iid"), seed=0)


def test_more_classes_per_client_than_classes_is_a_user_error(labels):
    with pytest.raises(FedmiaError, match="classes:11 .* 10 present"):
        split_with(labels, "classes:11", clients=3)


def test_an_impossible_dirichlet_partition_is_one_user_error_without_warnings(labels):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FedmiaError, match="dirichlet:0.001"):
            split_with(labels, "dirichlet:0.001", clients=300)


def test_too_few_samples_or_bad_fractions_are_user_errors():
    with pytest.raises(FedmiaError, match="too few"):
        make_privacy_split(np.arange(8) % 2, 2, PartitionSpec.parse("iid"), seed=0)
    for bad in ((0.5, 0.3, 0.2, 0.2), (0.4, 0.0, 0.3, 0.3)):
        with pytest.raises(FedmiaError, match="fractions"):
            SplitFractions(*bad)


def test_a_pool_size_splits_a_stratified_draw_of_that_many_samples():
    labels = np.repeat(np.arange(10), 100)
    split = make_privacy_split(labels, 4, PartitionSpec.parse("iid"), seed=3, pool_size=400)
    used = np.concatenate([*split.clients, split.nonmembers, split.population, split.test])
    assert len(used) == 400 and len(np.unique(used)) == 400
    assert np.bincount(labels[used], minlength=10).tolist() == [40] * 10
    again = make_privacy_split(labels, 4, PartitionSpec.parse("iid"), seed=3, pool_size=400)
    assert all(np.array_equal(a, b) for a, b in zip(split.clients, again.clients))
