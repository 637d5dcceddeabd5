"""Datasets as arrays (checked files, verified downloads) and seeded batch orders."""

from . import augment
from .batching import epoch_batches, sample_batches, steps_per_epoch
from .mnist import DATASETS, Dataset, Split, load, load_pickle, read_idx

__all__ = [
    "DATASETS",
    "augment",
    "Dataset",
    "Split",
    "epoch_batches",
    "load",
    "load_pickle",
    "read_idx",
    "sample_batches",
    "steps_per_epoch",
]
