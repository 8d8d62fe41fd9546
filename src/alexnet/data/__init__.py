"""Datasets as uint8 tensors, decoding and caching, batch loading, augmentation."""

from alexnet.data.bundle import DataBundle, Split, list_datasets, load_data
from alexnet.data.loader import BatchLoader

__all__ = ["BatchLoader", "DataBundle", "Split", "list_datasets", "load_data"]
