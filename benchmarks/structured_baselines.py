"""Structured (channel) pruning baselines built on Torch-Pruning, for comparison with the
FLOP-aware MILP pruner.

:func:`torch_pruning_baseline` returns a physically pruned copy of a model whose MAC count
(Torch-Pruning's own counter) is at or just under a fraction of the dense count, with one of
three channel rankings:

* ``"magnitude"``: group L2 magnitude, ranked globally over all layers;
* ``"taylor"``: group first-order Taylor ``|w * dL/dw|`` (cross entropy on ``calib``, the
  gradients recomputed before every pruning step), ranked globally;
* ``"uniform"``: group L2 magnitude ranked within each layer, so every layer loses the same
  share of its channels.

How the target is reached: a coarse pass of :data:`COARSE_STEPS` iterative pruner steps (each
removes ``1 / COARSE_STEPS`` of the initial prunable channels) runs until the next step would
go under the target; from the model before that step, a bisection on the extra pruning ratio
of one more step (a fresh one-step pruner each time) keeps the largest model whose MACs are
<= the target, stopping once within :data:`MAC_TOL` of the dense count or at one-channel
resolution.

Torch-Pruning is an optional dependency (``pip install torch-pruning``); the tests do not
need it. ``python benchmarks/structured_baselines.py`` runs a short smoke check.
"""

from __future__ import annotations

import copy
import math
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

try:
    import torch_pruning as tp
except ImportError as exc:  # pragma: no cover - the message is the point
    raise ImportError("benchmarks/structured_baselines.py needs torch-pruning "
                      "(pip install torch-pruning)") from exc

__all__ = ["COARSE_STEPS", "IMPORTANCES", "MAC_TOL", "count_macs_params", "default_ignored",
           "torch_pruning_baseline"]

IMPORTANCES = ("magnitude", "taylor", "uniform")
COARSE_STEPS = 25          # coarse iterative steps over the full channel budget (4% each)
MAC_TOL = 1e-3             # stop refining once within this fraction of the dense MACs
_MAX_BISECT = 20           # safety cap on refinement trials
_CALIB_BATCH = 256         # chunk size for the Taylor gradient pass


# ----------------------------------------------------------------------------- counting
def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """(MACs, parameters) of ``model`` on ``example_input`` by Torch-Pruning's counter
    (``torch_pruning.utils.count_ops_and_params``; the model is not modified)."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


# ----------------------------------------------------------------------------- ignored layers
def _option_a_stream_layers(model: nn.Module) -> list[nn.Module]:
    """Layers writing the residual stream of option-A (slice + zero-pad shortcut) ResNets.

    Torch-Pruning does not trace the channel ``F.pad`` of that shortcut and its pad width is
    fixed at construction, so pruning the stream breaks the network: the stem convolution
    and every block's ``conv2`` must keep their outputs (the block-internal channels remain
    prunable)."""
    try:
        from falcon_milp.torch.architectures import _BasicBlockA
    except ImportError:  # pragma: no cover
        return []
    blocks = [m for m in model.modules() if isinstance(m, _BasicBlockA)]
    if not blocks:
        return []
    inside = {id(sub) for b in blocks for sub in b.modules()}
    stem = next((m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in inside),
                None)
    return ([stem] if stem is not None else []) + [b.conv2 for b in blocks]


def default_ignored(model: nn.Module) -> list[nn.Module]:
    """Layers whose outputs are never pruned: the classifier (the last ``nn.Linear``, or the
    last convolution when there is none) and structural layers Torch-Pruning cannot prune
    consistently (the residual stream of option-A ResNets)."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not head:
        head = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return head[-1:] + _option_a_stream_layers(model)


def _map_modules(src: nn.Module, dst: nn.Module, modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The modules of ``dst`` (a deep copy of ``src``) at the places of ``modules`` in ``src``."""
    names = {id(m): n for n, m in src.named_modules()}
    out = []
    for m in modules:
        if not isinstance(m, nn.Module) or id(m) not in names:
            raise ValueError("ignored: every entry must be a submodule of model")
        out.append(dst.get_submodule(names[id(m)]))
    return out


# ----------------------------------------------------------------------------- validation
def _check_args(flops_fraction: float, importance: str, calib, round_to) -> None:
    if (isinstance(flops_fraction, bool) or not isinstance(flops_fraction, (int, float))
            or not math.isfinite(flops_fraction) or not 0.0 < flops_fraction <= 1.0):
        raise ValueError(f"flops_fraction must be a number in (0, 1]; got {flops_fraction!r}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}; got {importance!r}")
    if importance == "taylor":
        if calib is None:
            raise ValueError("calib: importance='taylor' needs calib=(x, y) for the loss gradients")
        if (not isinstance(calib, (tuple, list)) or len(calib) != 2
                or not all(isinstance(t, torch.Tensor) for t in calib)
                or calib[0].shape[0] != calib[1].shape[0] or calib[0].shape[0] == 0):
            raise ValueError("calib must be a pair (x, y) of tensors with the same non-zero "
                             "first dimension")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int)
                                 or round_to < 1):
        raise ValueError(f"round_to must be a positive int or None; got {round_to!r}")


# ----------------------------------------------------------------------------- pruning helpers
def _taylor_grads(model: nn.Module, calib: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Fill ``.grad`` with d(mean cross entropy on calib)/d(param), eval mode (BN statistics
    untouched); parameters without a gradient get zeros."""
    x, y = calib
    model.zero_grad(set_to_none=True)
    n = x.shape[0]
    for s in range(0, n, _CALIB_BATCH):
        loss = F.cross_entropy(model(x[s:s + _CALIB_BATCH]), y[s:s + _CALIB_BATCH],
                               reduction="sum") / n
        loss.backward()
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _copy_grads(src: nn.Module, dst: nn.Module) -> None:
    for ps, pd in zip(src.parameters(), dst.parameters()):
        pd.grad = None if ps.grad is None else ps.grad.clone()


def _make_pruner(model: nn.Module, example_input: torch.Tensor, importance: str, ratio: float,
                 steps: int, ignored: list[nn.Module], round_to: int | None) -> tp.pruner.BasePruner:
    imp = (tp.importance.TaylorImportance() if importance == "taylor"
           else tp.importance.MagnitudeImportance(p=2))
    return tp.pruner.BasePruner(model, example_input, importance=imp,
                                global_pruning=importance != "uniform", pruning_ratio=ratio,
                                iterative_steps=steps, ignored_layers=ignored, round_to=round_to)


def _prunable_channels(pruner: tp.pruner.BasePruner) -> int:
    return max(int(pruner.initial_total_channels), 1)


def _macs(model: nn.Module, example_input: torch.Tensor) -> int:
    try:
        return count_macs_params(model, example_input)[0]
    except RuntimeError as exc:
        raise RuntimeError("torch-pruning produced an inconsistent model (a coupling it does not "
                           "trace, e.g. a channel pad/slice shortcut); pass the layers that write "
                           f"that tensor as ignored: {exc}") from exc


# ----------------------------------------------------------------------------- the baseline
def torch_pruning_baseline(model: nn.Module, example_input: torch.Tensor, flops_fraction: float,
                           importance: str, calib: tuple[torch.Tensor, torch.Tensor] | None = None,
                           *, ignored: Iterable[nn.Module] | None = None,
                           round_to: int | None = None) -> nn.Module:
    """A physically channel-pruned deep copy of ``model`` (left untouched) with
    MACs <= ``flops_fraction`` * dense MACs, as close to it as the channel granularity allows.

    ``importance``: "magnitude" | "taylor" (needs ``calib=(x, y)``) | "uniform" (see the module
    docstring). ``ignored``: extra modules whose outputs are kept (the classifier and the
    option-A residual stream are always kept, see :func:`default_ignored`). ``round_to``:
    keep channel counts multiples of it (Torch-Pruning's option; coarser, so lands lower).
    The copy is returned in the training mode of ``model``, without gradients."""
    _check_args(flops_fraction, importance, calib, round_to)
    if not isinstance(example_input, torch.Tensor):
        raise ValueError("example_input must be a tensor")
    was_training = model.training
    work = copy.deepcopy(model).eval()
    keep = default_ignored(work) + _map_modules(model, work, ignored or [])
    dense = _macs(work, example_input)
    target = flops_fraction * dense
    if dense <= target:
        work.zero_grad(set_to_none=True)
        return work.train(was_training)

    # Coarse: iterative steps over the whole channel budget until the target is passed.
    pruner = _make_pruner(work, example_input, importance, 1.0, COARSE_STEPS, keep, round_to)
    total0 = _prunable_channels(pruner)
    best, best_macs, snap, done = None, None, None, 0
    for done in range(COARSE_STEPS):
        snap = copy.deepcopy(work)
        if importance == "taylor":
            _taylor_grads(work, calib)
        pruner.step()
        macs = _macs(work, example_input)
        if macs <= target:
            best, best_macs = work, macs
            break
    if best is None:
        raise ValueError(f"flops_fraction {flops_fraction} is unreachable: torch-pruning stops at "
                         f"MAC fraction {macs / dense:.4f}")

    # Fine: bisection on the ratio of one more step taken from the snapshot before the last one.
    if importance == "taylor":
        _taylor_grads(snap, calib)
    total = max(total0 * (COARSE_STEPS - done) / COARSE_STEPS, 1.0)  # prunable channels in snap
    lo, hi = 0.0, min(1.0, 1.5 * total0 / (COARSE_STEPS * total))
    snap_keep = _snap_keep(snap, work, keep)
    for _ in range(_MAX_BISECT):
        if target - best_macs <= MAC_TOL * dense or (hi - lo) * total < 0.5:
            break
        mid = 0.5 * (lo + hi)
        trial = copy.deepcopy(snap)
        if importance == "taylor":
            _copy_grads(snap, trial)
        _make_pruner(trial, example_input, importance, mid, 1,
                     _map_modules(snap, trial, snap_keep), round_to).step()
        macs = _macs(trial, example_input)
        if macs <= target:
            hi = mid
            if macs > best_macs:
                best, best_macs = trial, macs
        else:
            lo = mid
    best.zero_grad(set_to_none=True)
    return best.train(was_training)


def _snap_keep(snap: nn.Module, work: nn.Module, keep: list[nn.Module]) -> list[nn.Module]:
    """``keep`` (modules of ``work``) as modules of ``snap`` (same module names)."""
    names = {id(m): n for n, m in work.named_modules()}
    return [snap.get_submodule(names[id(m)]) for m in keep]


# ----------------------------------------------------------------------------- smoke check
def _smoke() -> None:
    """Prune the bundled MNIST CNN to 50% MACs with each ranking and print the result."""
    import time

    from falcon_milp.torch.architectures import example_input, load_pretrained
    from falcon_milp.torch.data import load_mnist, load_mnist_5k, subset
    from falcon_milp.torch.train import evaluate

    torch.set_num_threads(1)
    x_test, y_test = load_mnist(split="test")
    x_cal, y_cal = subset(*load_mnist_5k(), 1000, seed=0)  # training images, all classes
    model = load_pretrained("mnist_cnn")
    ex = example_input("mnist_cnn")
    dense, _ = count_macs_params(model, ex)
    print(f"mnist_cnn dense: {dense} MACs, acc {evaluate(model, x_test, y_test):.4f}")
    for imp in IMPORTANCES:
        t0 = time.perf_counter()
        pruned = torch_pruning_baseline(model, ex, 0.5, imp, calib=(x_cal, y_cal)
                                        if imp == "taylor" else None)
        dt = time.perf_counter() - t0
        macs, params = count_macs_params(pruned, ex)
        assert macs <= 0.5 * dense, (imp, macs, dense)
        print(f"  {imp:9s} MAC fraction {macs / dense:.4f}  params {params}  "
              f"acc {evaluate(pruned, x_test, y_test):.4f}  {dt:.1f}s")
    assert count_macs_params(model, ex)[0] == dense, "the input model was modified"


if __name__ == "__main__":
    _smoke()
