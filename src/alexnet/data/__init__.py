"""Datasets as uint8 tensors, decoding and caching, batch loading, augmentation."""

from alexnet.data.loading import BatchLoader, DataBundle, Split, list_datasets, load_data

__all__ = ["BatchLoader", "DataBundle", "Split", "list_datasets", "load_data"]
