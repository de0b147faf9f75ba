"""export_instance: groups, costs, budgets, metadata, save/load round trip, errors."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from falcon_milp import load_instance, save_instance, solve
from falcon_milp.torch import InputShapeError, NoPrunableLayerError, OptionError
from falcon_milp.torch.architectures import build_model, example_input, load_pretrained
from falcon_milp.torch.data import load_mnist_5k, subset
from falcon_milp.torch.export import budgets_from_fractions, export_instance
from falcon_milp.torch.flops import flat_weights, prunable_layers
from falcon_milp.torch.importance import MagnitudeImportance
from falcon_milp.torch.masks import apply_mask, layer_usage


def test_resnet20_magnitude_round_trip(tmp_path):
    model = build_model("resnet20", seed=0)
    inst = export_instance(model, example_input("resnet20"), max_nnz=100_000, max_flops=12e6,
                           metadata={"arch": "resnet20"})
    assert inst.n_weights == 268_336 and inst.n_groups == 20
    assert inst.names[0] == "conv1" and inst.names[-1] == "fc" and inst.names[1] == "layer1.0.conv1"
    assert inst.total_flops == 40_551_040 and inst.max_nnz == 100_000 and inst.max_flops == 12e6
    assert inst.importance.dtype == np.float32
    layers = prunable_layers(model, example_input("resnet20"))
    assert np.array_equal(inst.importance, flat_weights(layers).numpy() ** 2)
    meta = inst.metadata
    assert meta["model"] == "ResNet20" and meta["importance"] == "magnitude" and meta["arch"] == "resnet20"
    assert meta["input_shape"] == [1, 3, 32, 32] and meta["dense_flops"] == 40_551_040
    back = load_instance(save_instance(inst, tmp_path / "r20"))
    assert back.names == inst.names and np.array_equal(back.importance, inst.importance)
    assert np.array_equal(back.costs, inst.costs) and back.budgets == inst.budgets
    assert back.metadata == meta


def test_no_budget_and_fractions():
    model = build_model("mnist_mlp", seed=0)
    x = example_input("mnist_mlp")
    free = export_instance(model, x)
    assert free.max_nnz == 32_360 and free.max_flops == 32_360.0
    frac = export_instance(model, x, nnz_fraction=0.5, flops_fraction=0.3, dtype=np.float64)
    assert frac.max_nnz == 16_180 and frac.max_flops == pytest.approx(0.3 * 32_360)
    assert frac.importance.dtype == np.float64 and frac.metadata["flops_fraction"] == 0.3
    layers = prunable_layers(model, x)
    assert budgets_from_fractions(layers, 1 / 3, None) == (math.floor(32_360 / 3), None)
    assert budgets_from_fractions(layers, 0, 1) == (0, 32_360.0)


def test_obs_flexrel_export_then_mask_the_solution():
    model = load_pretrained("mnist_cnn")
    data = subset(*load_mnist_5k(), 32, seed=0)
    x = example_input("mnist_cnn")
    for kind, opts in (("obs", {"lam2": 1e-3}), ("flexrel", {"delta": 0.25})):
        inst = export_instance(model, x, kind, data, flops_fraction=0.3, importance_options=opts)
        assert inst.metadata["importance"] == kind and inst.metadata["n_calibration"] == 32
        assert inst.metadata["importance_options"]["lam2" if kind == "obs" else "delta"] == list(opts.values())[0]
        res = solve(inst, solver="ratio-greedy")
        layers = prunable_layers(model, x)
        pruned = build_model("mnist_cnn")
        pruned.load_state_dict(model.state_dict())
        players = prunable_layers(pruned, x)
        apply_mask(players, res.mask, instance=inst)
        usage = layer_usage(players)
        assert usage.flops <= inst.max_flops and usage.nnz == int(res.mask.sum())
    assert len(layers) == 4


def test_custom_scorer_and_errors():
    model = build_model("mnist_mlp")
    x = example_input("mnist_mlp")

    class Ones:
        kind = "ones"

        def __call__(self, model, layers, data=None):
            return np.ones(sum(l.n_weights for l in layers))

    assert export_instance(model, x, Ones()).metadata["importance"] == "ones"
    assert export_instance(model, x, MagnitudeImportance(), include=["fc3"]).n_weights == 200

    class Bad(Ones):
        def __call__(self, model, layers, data=None):
            return np.ones(3)

    with pytest.raises(OptionError, match=r"^importance 'ones' returned shape \(3,\); expected \(32360,\)$"):
        export_instance(model, x, Bad())
    with pytest.raises(OptionError, match=r"^`flops_fraction` must be in \[0, 1\]; got 1.5$"):
        export_instance(model, x, flops_fraction=1.5)
    with pytest.raises(OptionError, match=r"^`nnz_fraction` must be in \[0, 1\]; got -0.1$"):
        export_instance(model, x, nnz_fraction=-0.1)
    with pytest.raises(OptionError, match=r"^`nnz_fraction` must be in \[0, 1\]; got nan$"):
        export_instance(model, x, nnz_fraction=float("nan"))
    with pytest.raises(OptionError, match=r"^`flops_fraction` must be in \[0, 1\]; got '0.3'$"):
        export_instance(model, x, flops_fraction="0.3")
    with pytest.raises(OptionError, match=r"^give `max_nnz` or `nnz_fraction`, not both$"):
        export_instance(model, x, max_nnz=3, nnz_fraction=0.1)
    with pytest.raises(OptionError, match=r"^give `max_flops` or `flops_fraction`, not both$"):
        export_instance(model, x, max_flops=3, flops_fraction=0.1)
    with pytest.raises(OptionError, match=r"^`dtype` must be float32 or float64; got int64$"):
        export_instance(model, x, dtype=np.int64)
    with pytest.raises(OptionError, match=r"^`importance_options` apply only to an importance given by name$"):
        export_instance(model, x, Ones(), importance_options={"a": 1})
    with pytest.raises(OptionError, match=r"^importance 'obs' needs calibration `data` \(inputs, targets\)$"):
        export_instance(model, x, "obs")
    with pytest.raises(NoPrunableLayerError, match=r"^Sequential has no prunable layer"):
        export_instance(nn.Sequential(nn.Flatten()), x)
    with pytest.raises(InputShapeError, match=r"^`example_input` of shape \(1, 1, 27, 28\) does not fit MNISTMLP: "):
        export_instance(model, torch.zeros(1, 1, 27, 28))


def test_package_lazy_names_resolve():
    import falcon_milp.torch as ft
    for name in ft.__all__:
        assert getattr(ft, name) is not None, name
    assert ft.export_instance is export_instance
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        ft.nope
