"""The architecture tables, as plain data: read by the torch models and by the synthetic instances.

:mod:`falcon_milp.torch.architectures` builds the networks from these numbers and
:mod:`falcon_milp.synthetic` derives the layer tables of its architecture-shaped instances from
them (without importing torch), so the two always describe the same networks.
"""
from __future__ import annotations

RESNET20_STEM = 16
"""ResNet20 (CIFAR): output channels of the 3x3 stem conv."""
RESNET20_STAGES = ((16, 1), (32, 2), (64, 2))
"""ResNet20: (planes, stride of the first block) of each stage; 3 basic blocks per stage."""
RESNET20_BLOCKS = 3

MOBILENET_STEM = 32
"""MobileNetV1: output channels of the 3x3 stride-2 stem conv."""
MOBILENET_CFG = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                 (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
"""MobileNetV1 (width 1.0): (output channels, stride) of the 13 depthwise-separable blocks."""

RESNET50_STEM = 64
"""ResNet50 v1.5: output channels of the 7x7 stride-2 stem conv (then a 3x3 stride-2 max pool)."""
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
"""ResNet50: (planes, bottleneck blocks, stride of the first block) of each stage."""
BOTTLENECK_EXPANSION = 4
"""Output channels of a bottleneck block = planes * this."""
