"""Keras-style layers and a Sequential model on fastconv's kernels."""
from .activations import get_activation
from .fit import TrainingDiverged
from .layers import (
                     GELU,
                     Activation,
                     Add,
                     AveragePooling2D,
                     BatchNormalization,
                     Concatenate,
                     Conv2D,
                     Dense,
                     DepthwiseConv2D,
                     Dropout,
                     Flatten,
                     GlobalAveragePooling2D,
                     GlobalMaxPooling2D,
                     Input,
                     InputLayer,
                     KerasTensor,
                     Layer,
                     MaxPooling2D,
                     ReLU,
                     Scale,
                     SeparableConv2D,
                     Softmax,
                     ZeroPadding2D,
                     set_random_seed,
)
from .losses import SparseCategoricalCrossentropy
from .model import Model, Sequential

__all__ = [
    "Activation", "Add", "AveragePooling2D", "BatchNormalization", "Concatenate", "Conv2D",
    "Dense", "DepthwiseConv2D", "Dropout", "Flatten", "GELU", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "Input", "InputLayer", "KerasTensor", "Layer", "MaxPooling2D",
    "Model", "ReLU", "Scale", "SeparableConv2D", "Sequential", "Softmax",
    "SparseCategoricalCrossentropy", "TrainingDiverged", "ZeroPadding2D", "get_activation",
    "set_random_seed",
]
