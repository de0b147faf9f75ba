"""Masks: weights stay zero through training, zero-aware counting, pruned state_dict round trip."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from falcon_milp import PruningInstance
from falcon_milp.torch import ModelError
from falcon_milp.torch.architectures import build_model, example_input, load_checkpoint
from falcon_milp.torch.flops import dense_nnz, flat_weights, prunable_layers, set_flat_weights
from falcon_milp.torch.masks import (apply_mask, count_usage, current_mask, is_masked, layer_usage,
                                     pruned_state_dict, remove_masks, save_pruned)


def random_mask(p, keep, seed):
    rng = np.random.default_rng(seed)
    return rng.random(p) < keep


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_mask_stays_zero_after_training(opt):
    torch.manual_seed(0)
    model = build_model("mnist_cnn", seed=0)
    layers = prunable_layers(model, example_input("mnist_cnn"))
    mask = random_mask(dense_nnz(layers), 0.3, seed=1)
    apply_mask(layers, mask)
    assert all(is_masked(l.module) for l in layers)
    params = list(model.parameters())
    optim = (torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3) if opt == "sgd"
             else torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1))
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        optim.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optim.step()
    w = flat_weights(layers)
    assert torch.all(w[torch.from_numpy(~mask)] == 0)
    assert torch.count_nonzero(w[torch.from_numpy(mask)]) == int(mask.sum())
    assert np.array_equal(current_mask(layers), mask)
    usage = layer_usage(layers)
    f = np.repeat([l.flops_per_weight for l in layers], [l.n_weights for l in layers])
    assert usage.nnz == mask.sum() and usage.flops == int(f[mask].sum())
    assert usage.dense_flops == 1_083_008 and usage.flops_fraction == pytest.approx(usage.flops / 1_083_008)


def test_state_dict_round_trip_and_remove(tmp_path):
    model = build_model("mnist_mlp", seed=2)
    x = example_input("mnist_mlp", batch=4).normal_()
    layers = prunable_layers(model, x)
    mask = random_mask(dense_nnz(layers), 0.5, seed=3)
    apply_mask(layers, mask)
    out = model(x)
    state = pruned_state_dict(model)
    assert list(state) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    path = save_pruned(model, tmp_path / "pruned.pt")
    fresh = load_checkpoint(build_model("mnist_mlp"), path)
    assert torch.allclose(fresh(x), out)
    u = count_usage(fresh, x)
    assert u.nnz == mask.sum() and u.per_layer["fc3"][1:] == (200, 1)
    # a second mask replaces the first (no stacking); remove_masks folds it in
    mask2 = mask & random_mask(mask.size, 0.5, seed=4)
    apply_mask(layers, mask2)
    assert len(model.fc1.parametrizations.weight) == 1
    remove_masks(model)
    assert not any(is_masked(m) for m in model.modules())
    assert list(model.state_dict()) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert np.array_equal(current_mask(prunable_layers(model, x)), mask2)


def test_cnn_state_dict_keys_with_biases():
    model = build_model("mnist_cnn", seed=0)
    layers = prunable_layers(model, example_input("mnist_cnn"))
    apply_mask(layers, np.ones(dense_nnz(layers), bool))
    assert sorted(pruned_state_dict(model)) == sorted(build_model("mnist_cnn").state_dict())


def test_set_flat_weights_on_masked_model_keeps_mask():
    model = build_model("mnist_mlp", seed=0)
    layers = prunable_layers(model, example_input("mnist_mlp"))
    mask = random_mask(dense_nnz(layers), 0.2, seed=5)
    apply_mask(layers, mask)
    set_flat_weights(layers, torch.ones(dense_nnz(layers)))
    assert torch.equal(flat_weights(layers), torch.from_numpy(mask).float())


def test_apply_mask_errors():
    model = build_model("mnist_mlp")
    layers = prunable_layers(model, example_input("mnist_mlp"))
    p = dense_nnz(layers)
    with pytest.raises(ModelError, match=r"^`mask` must be a bool array; got dtype float64$"):
        apply_mask(layers, np.ones(p))
    with pytest.raises(ModelError, match=r"^`mask` must have shape \(32360,\) \(one entry per prunable weight\); got \(5,\)$"):
        apply_mask(layers, np.ones(5, bool))
    with pytest.raises(ModelError, match=r"^`mask` must be a bool numpy array or tensor; got list$"):
        apply_mask(layers, [True] * p)
    inst = PruningInstance.from_groups([np.ones(31360), np.ones(800), np.ones(200)], [1, 1, 1],
                                       names=["fc1", "fc2", "out"])
    with pytest.raises(ModelError, match=r"^instance group 2 is 'out' but the model's prunable layer 2 is 'fc3'$"):
        apply_mask(layers, np.ones(p, bool), instance=inst)
    inst = PruningInstance.from_groups([np.ones(31360), np.ones(800)], [1, 1], names=["fc1", "fc2"])
    with pytest.raises(ModelError, match=r"^instance group 2 is '<none>' but the model's prunable layer 2 is 'fc3'$"):
        apply_mask(layers, np.ones(p, bool), instance=inst)
    inst = PruningInstance.from_groups([np.ones(31360), np.ones(800), np.ones(199)], [1, 1, 1],
                                       names=["fc1", "fc2", "fc3"])
    with pytest.raises(ModelError, match=r"^instance group 'fc3' has 199 weights but the layer has 200$"):
        apply_mask(layers, np.ones(p, bool), instance=inst)
    assert not is_masked(model.fc1)
