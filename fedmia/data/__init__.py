"""Datasets, the privacy split, and client partitioning."""

from fedmia.data.datasets import DATASETS, ArrayDataset, load_dataset
from fedmia.data.partition import PartitionSpec, partition_indices
from fedmia.data.splits import PrivacySplit, SplitFractions, make_privacy_split

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "PartitionSpec",
    "PrivacySplit",
    "SplitFractions",
    "load_dataset",
    "make_privacy_split",
    "partition_indices",
]
