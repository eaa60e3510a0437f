"""Serving data to training: Hard-Spurious-ImageNet and a source's own images as Lightning data modules.

HSIDataModule      data=hsi | hsi_v2 | hsi_sam: samples composed on the fly, (x, y, group_id)
SourceDataModule   data=source: plain classification on a source's images, (x, y, 0)
HSIDataset, SourceDataset, EpochSampler; train_transform, eval_transform
"""

from hsi.data.datasets import EpochSampler, HSIDataset, SourceDataset
from hsi.data.modules import HSIDataModule, SourceDataModule, build_is_complete, failed_images
from hsi.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform

__all__ = [
    "EpochSampler",
    "HSIDataModule",
    "HSIDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SourceDataModule",
    "SourceDataset",
    "build_is_complete",
    "eval_transform",
    "failed_images",
    "train_transform",
]
