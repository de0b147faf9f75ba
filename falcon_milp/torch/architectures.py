"""Network definitions (no torchvision) and checkpoint loading.

=============  ==========  =====================================================================
name           input       network
=============  ==========  =====================================================================
resnet20       3x32x32     ResNet20 for CIFAR-10 (He et al. 2016), option-A (parameter-free,
                           zero-padded) shortcuts: 20 prunable tensors, 268,336 weights
mobilenetv1    3x224x224   MobileNetV1 width 1.0 (Howard et al. 2017): 28 tensors, 4,209,088
resnet50       3x224x224   ResNet50 v1.5 (stride on the 3x3 conv), 1x1 downsample convs:
                           54 tensors, 25,502,912 weights
mnist_mlp      1x28x28     MLP 784-40-20-10 without bias: 3 tensors, 32,360 weights
mnist_bn_cnn   1x28x28     BatchNorm CNN: conv3x3 16/32/32 with BN, fc(800->64)-BN-fc(64->10):
                           5 tensors, 65,808 weights
mnist_cnn      1x28x28     conv(1->16,5)-pool-conv(16->32,5)-pool-fc(512->64)-fc(64->10), with
                           biases: 4 tensors, 46,608 weights
=============  ==========  =====================================================================

Module names follow the torchvision convention where one exists (``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``); they become the group names of exported instances.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..arch_tables import (BOTTLENECK_EXPANSION, MOBILENET_CFG, MOBILENET_STEM, RESNET20_BLOCKS, RESNET20_STAGES,
                           RESNET20_STEM, RESNET50_STAGES, RESNET50_STEM)
from . import CheckpointMismatchError, DataFileError, ModelError

__all__ = ["ARCHITECTURES", "ArchSpec", "MNISTBNCNN", "MNISTCNN", "MNISTMLP", "MobileNetV1", "ResNet20",
           "ResNet50", "build_model", "example_input", "input_shape", "load_checkpoint",
           "load_pretrained", "pretrained_path"]


# ----------------------------------------------------------------------------- ResNet20
class _BasicBlockA(nn.Module):
    """3x3-3x3 residual block; the shortcut subsamples and zero-pads channels (option A)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:
            short = x[:, :, ::self.stride, ::self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class ResNet20(nn.Module):
    """ResNet20 for 32x32 inputs: 3 stages of 3 basic blocks (16, 32, 64 channels)."""

    def __init__(self, num_classes: int = 10, blocks: int = RESNET20_BLOCKS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, RESNET20_STEM, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET20_STEM)
        layers, in_planes = [], RESNET20_STEM
        for planes, stride in RESNET20_STAGES:
            stage = []
            for b in range(blocks):
                stage.append(_BasicBlockA(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ----------------------------------------------------------------------------- MobileNetV1
class _DepthwiseSeparable(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.pw = nn.Conv2d(in_ch, out_ch, 1, 1, 0, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.dw(x)))
        return F.relu(self.bn2(self.pw(x)))


class MobileNetV1(nn.Module):
    """MobileNetV1 (width 1.0): a 3x3 stride-2 conv, 13 depthwise-separable blocks, a classifier."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, MOBILENET_STEM, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(MOBILENET_STEM)
        blocks, in_ch = [], MOBILENET_STEM
        for out_ch, stride in MOBILENET_CFG:
            blocks.append(_DepthwiseSeparable(in_ch, out_ch, stride))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- ResNet50
class _Bottleneck(nn.Module):
    expansion = BOTTLENECK_EXPANSION

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(out + short)


class ResNet50(nn.Module):
    """ResNet50 v1.5 for 224x224 inputs (stages of 3, 4, 6, 3 bottlenecks)."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, RESNET50_STEM, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(RESNET50_STEM)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_planes, stages = RESNET50_STEM, []
        for planes, n, stride in RESNET50_STAGES:
            blocks = []
            for b in range(n):
                blocks.append(_Bottleneck(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes * _Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- MNIST
class MNISTMLP(nn.Module):
    """784-40-20-10 fully connected network with ReLU, no biases."""

    def __init__(self, hidden: tuple[int, int] = (40, 20), num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, hidden[0], bias=False)
        self.fc2 = nn.Linear(hidden[0], hidden[1], bias=False)
        self.fc3 = nn.Linear(hidden[1], num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class MNISTCNN(nn.Module):
    """conv5x5(1->16)-maxpool2-conv5x5(16->32)-maxpool2-fc(512->64)-fc(64->10), ReLU."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


class MNISTBNCNN(nn.Module):
    """A BatchNorm CNN: conv3x3(1->16)-BN-pool-conv3x3(16->32)-BN-pool-conv3x3(32->32)-BN
    -fc(800->64)-BN-fc(64->10), ReLU, no conv biases (BN follows). MACs per weight 784 / 196 /
    25 / 1 / 1: the FLOPs sit in the first two convolutions, the weights in fc1."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 5 * 5, 64, bias=False)
        self.bn4 = nn.BatchNorm1d(64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.relu(self.bn3(self.conv3(x)))
        return self.fc2(F.relu(self.bn4(self.fc1(torch.flatten(x, 1)))))


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ArchSpec:
    """A named architecture: its constructor, input shape (C, H, W), classes and dataset."""

    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    num_classes: int
    dataset: str


ARCHITECTURES: dict[str, ArchSpec] = {
    "resnet20": ArchSpec(ResNet20, (3, 32, 32), 10, "cifar10"),
    "mobilenetv1": ArchSpec(MobileNetV1, (3, 224, 224), 1000, "imagenet"),
    "resnet50": ArchSpec(ResNet50, (3, 224, 224), 1000, "imagenet"),
    "mnist_mlp": ArchSpec(MNISTMLP, (1, 28, 28), 10, "mnist"),
    "mnist_cnn": ArchSpec(MNISTCNN, (1, 28, 28), 10, "mnist"),
    "mnist_bn_cnn": ArchSpec(MNISTBNCNN, (1, 28, 28), 10, "mnist"),
}


def _spec(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise ModelError(
            f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None


def build_model(name: str, device: str | torch.device | None = None, seed: int | None = None) -> nn.Module:
    """A freshly initialised model (PyTorch default init; ``seed`` makes it reproducible).

    ``device="meta"`` builds it without allocating weights (shapes only, e.g. for FLOP counts).
    """
    spec = _spec(name)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = spec.factory() if device is None else _on_device(spec.factory, device)
    else:
        model = spec.factory() if device is None else _on_device(spec.factory, device)
    return model


def _on_device(factory: Callable[[], nn.Module], device: str | torch.device) -> nn.Module:
    with torch.device(device):
        return factory()


def input_shape(name: str) -> tuple[int, ...]:
    """Input shape (C, H, W) of one example of architecture ``name``."""
    return _spec(name).input_shape


def example_input(name: str, batch: int = 1, device: str | torch.device | None = None) -> torch.Tensor:
    """A zero input of shape (batch, C, H, W) for FLOP counting."""
    return torch.zeros((batch, *_spec(name).input_shape), device=device)


# ----------------------------------------------------------------------------- checkpoints
def _load_failure(source: str | os.PathLike, head: bytes, exc: Exception) -> str:
    """Why torch.load (weights only) refused a file, in words that never advise unsafe loading."""
    import pickle
    if head == b"PK" and not zipfile.is_zipfile(source):
        return "is a truncated or corrupt torch.save archive"
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        return ("is not a state_dict of tensors (it holds other pickled Python objects, e.g. a "
                "whole model); save model.state_dict() and load that")
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"is truncated or corrupt ({msg})"


def check_finite(model: nn.Module, state: Mapping[str, Any], where: str = "checkpoint") -> None:
    """Raise DataFileError naming the first floating tensor of ``state`` with a NaN or infinity."""
    params = {k for k, _ in model.named_parameters()}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                idx = tuple(int(i) for i in torch.nonzero(bad)[0])
                what = "NaN" if bool(torch.isnan(value).any()) else "an infinite value"
                kind = "parameter" if key in params else "tensor"
                raise DataFileError(f"{where}: {kind} '{key}' has {what} (first non-finite entry "
                                    f"at index {idx})")


def _read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(source, Mapping):
        state, where = source, "checkpoint"
    else:
        where = f"checkpoint '{os.fspath(source)}'"
        if not os.path.exists(source):
            raise DataFileError(f"{where} does not exist")
        if os.path.isdir(source):
            raise DataFileError(f"{where} is a directory, not a checkpoint file")
        with open(source, "rb") as fh:
            head = fh.read(2)
        if not head:
            raise DataFileError(f"{where} is empty")
        if not (head == b"PK" or head[:1] == b"\x80"):   # torch.save zip archive / legacy pickle
            raise DataFileError(f"{where} is not a PyTorch checkpoint (neither a torch.save zip "
                                "archive nor a pickle)")
        try:
            with warnings.catch_warnings():   # the weights-only unpickler warns about protocols
                warnings.filterwarnings("ignore", category=UserWarning)
                state = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and format errors of any kind
            raise DataFileError(f"{where} {_load_failure(source, head, exc)}") from None
    for key in ("state_dict", "model_state_dict", "model"):  # common wrappers
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointMismatchError(f"{where} is not a state_dict (a mapping of names to tensors)")
    return state, where


def check_checkpoint(model: nn.Module, state: Mapping[str, Any], where: str = "checkpoint") -> None:
    """Raise CheckpointMismatchError naming the first key (in model order) that does not match."""
    expected = model.state_dict()
    arch = type(model).__name__
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointMismatchError(f"{where} does not match {arch}: key '{key}' is missing")
        value = state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointMismatchError(
                f"{where} does not match {arch}: key '{key}' is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise CheckpointMismatchError(
                f"{where} does not match {arch}: key '{key}' has shape {tuple(value.shape)} in the "
                f"checkpoint but {tuple(tensor.shape)} in the model")
    for key in state:
        if key not in expected:
            raise CheckpointMismatchError(f"{where} does not match {arch}: unexpected key '{key}'")


def load_checkpoint(model: nn.Module, source: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Load a state_dict (file or mapping; ``{'state_dict': ...}`` wrappers accepted) strictly.

    Every key and shape is checked first; the error names the first mismatching key; a tensor
    holding NaN or an infinity is refused (DataFileError naming it). The
    model must not carry masks (load before :func:`falcon_milp.torch.masks.apply_mask`).
    Returns the model.
    """
    state, where = _read_state_dict(source)
    check_checkpoint(model, state, where)
    check_finite(model, state, where)
    model.load_state_dict(state, strict=True)
    return model


def pretrained_path(name: str) -> str:
    """Path of the bundled trained weights of ``name`` (``falcon_milp/data/<name>.pt``)."""
    _spec(name)
    path = resources.files("falcon_milp").joinpath("data", f"{name}.pt")
    if not path.is_file():
        bundled = sorted(p.name[:-3] for p in resources.files("falcon_milp").joinpath("data").iterdir()
                         if p.name.endswith(".pt")) if resources.files("falcon_milp").joinpath("data").is_dir() else []
        raise DataFileError(f"no bundled weights for architecture '{name}'; bundled: "
                            f"{', '.join(bundled) or 'none'}")
    return str(path)


def load_pretrained(name: str) -> nn.Module:
    """The bundled trained model ``name`` (MNIST networks; see docs/models.md), in eval mode."""
    model = build_model(name)
    load_checkpoint(model, pretrained_path(name))
    return model.eval()
