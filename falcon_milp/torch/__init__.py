"""PyTorch bridge: FLOP costs, importance scores, instance export and masks for real networks.

Importing this package does not import torch (the CLI loads ``falcon_milp.torch.export_command``
without it); the public names below are loaded on first use.

Modules (stable APIs other modules build on):

- :mod:`.architectures` -- ResNet20 (CIFAR), MobileNetV1, ResNet50 v1.5, MNIST MLP and CNN;
  ``build_model(name)``, ``input_shape(name)``, ``load_checkpoint``, ``load_pretrained``.
- :mod:`.flops` -- ``prunable_layers(model, example_input)``: one :class:`PrunableLayer`
  per prunable weight tensor, with its FLOP (MAC) cost per weight; flat weight helpers.
- :mod:`.data` -- MNIST IDX files, the bundled 5k MNIST training images, CIFAR-10 batches.
- :mod:`.masks` -- apply a flat 0/1 mask (weights stay zero in later training), mask files
  (``save_masks`` / ``load_masks``), zero-aware
  NNZ/FLOP counting, pruned ``state_dict``.
- :mod:`.gradients` -- per-sample gradients (n, p) with ``torch.func``, chunked.
- :mod:`.importance` -- magnitude, OBS/WoodFisher and FlexRel-style importance scores.
- :mod:`.export` -- ``export_instance(model, example_input, ...) -> PruningInstance``.
- :mod:`.train` -- a small deterministic training loop and accuracy evaluation.
- :mod:`.quadratic`, :mod:`.dfo`, :mod:`.backsolve` -- the local quadratic model Q, DFO (IHT
  with the ILP as projection, support swaps), the backsolve on a support.
- :mod:`.batchnorm` -- BatchNorm re-estimation; :mod:`.referee` -- validation split, the real
  loss as judge of candidates, the layer-scale search.
- :mod:`.stage` -- one FALCON stage; :mod:`.prune` -- ``prune_model`` (every method);
  :mod:`.gradual` -- ``gradual_prune`` (prune, fine-tune, repeat).
- structured pruning: :mod:`.channel_graph` (channels coupled through the network, torch.fx +
  networkx), :mod:`.channel_costs` (MACs / parameters as polynomials of the kept counts),
  :mod:`.channel_surgery` (masked model, physically smaller model), :mod:`.latency` (measured
  latency, per-layer table), :mod:`.structured` -- ``prune_channels`` (the channel MILP).
"""
from __future__ import annotations

import importlib
from typing import Any

from ..exceptions import FalconError, OptionError


class ModelError(FalconError, ValueError):
    """A model cannot be used as asked (no prunable layer, wrong input, bad checkpoint)."""


class NoPrunableLayerError(ModelError):
    """The model (after the ``include`` filter) has no prunable weight tensor."""


class InputShapeError(ModelError):
    """The example input does not fit the model (its forward pass fails)."""


class CheckpointMismatchError(ModelError):
    """A checkpoint's keys or shapes do not match the architecture."""


class DataFileError(FalconError, ValueError):
    """A data file (MNIST IDX, CIFAR-10 batch, mask, checkpoint) is missing or malformed."""


# public name -> defining submodule (loaded lazily so that torch is imported on first use)
_LAZY = {
    "PrunableLayer": "flops",
    "prunable_layers": "flops",
    "flat_weights": "flops",
    "set_flat_weights": "flops",
    "build_model": "architectures",
    "input_shape": "architectures",
    "example_input": "architectures",
    "load_checkpoint": "architectures",
    "load_pretrained": "architectures",
    "ARCHITECTURES": "architectures",
    "per_sample_grads": "gradients",
    "iter_per_sample_grads": "gradients",
    "apply_mask": "masks",
    "remove_masks": "masks",
    "save_masks": "masks",
    "load_masks": "masks",
    "count_usage": "masks",
    "pruned_state_dict": "masks",
    "get_importance": "importance",
    "export_instance": "export",
    "prune_model": "prune",
    "PruneReport": "prune",
    "METHODS": "prune",
    "gradual_prune": "gradual",
    "GradualReport": "gradual",
    "recalibrate_batchnorm": "batchnorm",
    "has_batchnorm": "batchnorm",
    "Referee": "referee",
    "split_calibration": "referee",
    "search_layer_scales": "referee",
    "QuadraticModel": "quadratic",
    "Projector": "dfo",
    "refine_support": "dfo",
    "run_stage": "stage",
    "StageConfig": "stage",
    "build_channel_graph": "channel_graph",
    "prune_channels": "structured",
    "ChannelReport": "structured",
    "slice_model": "channel_surgery",
    "measure_latency": "latency",
}

__all__ = ["CheckpointMismatchError", "DataFileError", "InputShapeError", "ModelError",
           "NoPrunableLayerError", "OptionError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'falcon_milp.torch' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
