"""Keras-style layers and a Sequential model on fastconv's kernels."""
from .activations import get_activation
from .fit import TrainingDiverged
from .layers import (
                     GELU,
                     Activation,
                     AveragePooling2D,
                     BatchNormalization,
                     Conv2D,
                     Dense,
                     DepthwiseConv2D,
                     Dropout,
                     Flatten,
                     GlobalAveragePooling2D,
                     Layer,
                     MaxPooling2D,
                     ReLU,
                     Scale,
                     SeparableConv2D,
                     Softmax,
)
from .losses import SparseCategoricalCrossentropy
from .model import Sequential

__all__ = [
    "Activation", "AveragePooling2D", "BatchNormalization", "Conv2D", "Dense",
    "DepthwiseConv2D", "Dropout", "Flatten", "GELU", "GlobalAveragePooling2D", "Layer",
    "MaxPooling2D", "ReLU", "Scale", "SeparableConv2D", "Sequential", "Softmax",
    "SparseCategoricalCrossentropy", "TrainingDiverged", "get_activation",
]
