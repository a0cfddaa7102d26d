"""Data for fastconv.nn: CIFAR-10 and image-folder loaders, batch iteration, augmentation.

Images are uint8 NHWC arrays until a batch is formed; augmentation runs on uint8 training
batches only, then `preprocess` turns a batch into the float32 input the model expects.
Every augmentation is called as `augment(batch, rng, index=..., epoch=...)`.
"""

from .archives import IMAGE_SUFFIXES, DatasetError
from .augment import ImageAugmenter, shift_batch
from .batches import (
    Normalize,
    batches,
    default_preprocess,
    prefetch,
    progress,
    train_val_split,
)
from .cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    cache_dir,
    download,
    load_cifar10,
)
from .folders import ImageFolderStream, load_image, load_image_folder

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DatasetError",
    "IMAGE_SUFFIXES",
    "ImageAugmenter",
    "ImageFolderStream",
    "Normalize",
    "batches",
    "cache_dir",
    "default_preprocess",
    "download",
    "load_cifar10",
    "load_image",
    "load_image_folder",
    "prefetch",
    "progress",
    "shift_batch",
    "train_val_split",
]
