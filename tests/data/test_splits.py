"""The privacy split and client partitioning."""

import numpy as np
import pytest

from fedmia.data import PartitionSpec, PrivacySplit, load_dataset, make_privacy_split
from fedmia.errors import FedmiaError


@pytest.fixture(scope="module")
def labels():
    return load_dataset("digits").labels


def pools(split: PrivacySplit) -> dict[str, np.ndarray]:
    named = {f"client{k}": part for k, part in enumerate(split.clients)}
    return {**named, "nonmembers": split.nonmembers, "population": split.population, "test": split.test}


@pytest.mark.parametrize("partition", ["iid", "dirichlet:0.5", "classes:2"])
def test_pools_are_pairwise_disjoint_and_sized_by_the_fractions(labels, partition):
    split = make_privacy_split(labels, 10, PartitionSpec.parse(partition), seed=0)
    everything = np.concatenate(list(pools(split).values()))
    assert len(everything) == len(set(everything.tolist()))
    n = len(labels)
    for pool in (split.nonmembers, split.population, split.test):
        assert len(pool) == int(0.2 * n)
    assert len(split.members) == int(0.4 * n)


def test_split_is_deterministic_for_a_seed_and_changes_with_it(labels):
    first = make_privacy_split(labels, 5, PartitionSpec.parse("dirichlet:0.3"), seed=1)
    again = make_privacy_split(labels, 5, PartitionSpec.parse("dirichlet:0.3"), seed=1)
    other = make_privacy_split(labels, 5, PartitionSpec.parse("dirichlet:0.3"), seed=2)
    assert first.to_dict() == again.to_dict()
    assert first.to_dict() != other.to_dict()


def test_split_round_trips_through_its_manifest_form(labels):
    split = make_privacy_split(labels, 4, PartitionSpec.parse("iid"), seed=0)
    restored = PrivacySplit.from_dict(split.to_dict())
    assert all(np.array_equal(a, b) for a, b in zip(pools(split).values(), pools(restored).values()))


def test_pools_are_stratified_by_label(labels):
    split = make_privacy_split(labels, 4, PartitionSpec.parse("iid"), seed=0)
    overall = np.bincount(labels) / len(labels)
    for pool in (split.nonmembers, split.population, split.test):
        assert np.abs(np.bincount(labels[pool], minlength=10) / len(pool) - overall).max() < 0.01


def test_iid_sizes_differ_by_at_most_one(labels):
    split = make_privacy_split(labels, 7, PartitionSpec.parse("iid"), seed=0)
    sizes = [len(part) for part in split.clients]
    assert max(sizes) - min(sizes) <= 1


def test_classes_k_gives_each_client_exactly_k_labels(labels):
    split = make_privacy_split(labels, 10, PartitionSpec.parse("classes:2"), seed=0)
    assert all(len(np.unique(labels[part])) == 2 for part in split.clients)


def test_small_alpha_is_more_skewed_than_large_alpha(labels):
    def mean_label_entropy(alpha: float) -> float:
        split = make_privacy_split(labels, 10, PartitionSpec.parse(f"dirichlet:{alpha}"), seed=0)
        entropies = []
        for part in split.clients:
            p = np.bincount(labels[part], minlength=10) / len(part)
            entropies.append(-(p[p > 0] * np.log(p[p > 0])).sum())
        return float(np.mean(entropies))

    assert mean_label_entropy(0.1) < mean_label_entropy(100.0) - 0.5


@pytest.mark.parametrize("text", ["dirichlet:-1", "dirichlet:", "classes:0", "classes:x", "foo", "iid:3"])
def test_bad_partition_strings_are_user_errors(text):
    with pytest.raises(FedmiaError, match="partition"):
        PartitionSpec.parse(text)


def test_partition_spec_prints_as_it_parses():
    for text in ("iid", "dirichlet:0.5", "classes:3"):
        assert str(PartitionSpec.parse(text)) == text


def test_too_many_clients_or_classes_are_user_errors(labels):
    with pytest.raises(FedmiaError, match="clients"):
        make_privacy_split(labels, 5000, PartitionSpec.parse("iid"), seed=0)
    with pytest.raises(FedmiaError, match="classes"):
        make_privacy_split(labels, 3, PartitionSpec.parse("classes:11"), seed=0)
