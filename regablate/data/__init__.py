"""Data sets by config name: `dataset.name` -> (settings class, builder)."""

from __future__ import annotations

from regablate.data.base import Data, Split
from regablate.data.cifar10 import Cifar10Settings, make_cifar10
from regablate.data.image_folder import ImageFolderSettings, make_image_folder
from regablate.data.sequence import SineSequenceSettings, make_sine_sequence
from regablate.data.synthetic import (
    SineSettings,
    SparseSyntheticSettings,
    make_sine,
    make_sparse_synthetic,
)
from regablate.data.tabular import TabularSettings, make_tabular

DATASETS = {
    "sine": (SineSettings, make_sine),
    "sparse_synthetic": (SparseSyntheticSettings, make_sparse_synthetic),
    "cifar10": (Cifar10Settings, make_cifar10),
    "image_folder": (ImageFolderSettings, make_image_folder),
    "tabular": (TabularSettings, make_tabular),
    "sine_sequence": (SineSequenceSettings, make_sine_sequence),
}

__all__ = ["DATASETS", "Data", "Split"]
