"""FLOP cost per weight (falcon-method.md section 1): check values and FlopCounterMode cross-checks."""
import math

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from falcon_milp.torch import InputShapeError, ModelError, NoPrunableLayerError
from falcon_milp.torch.architectures import build_model, example_input
from falcon_milp.torch.flops import (dense_flops, dense_nnz, flat_weights, flops_vector, layer_offsets,
                                     prunable_layers, set_flat_weights, split_flat)


def counter_macs(model, x):
    """Total MACs by torch's own counter (it reports FLOPs = 2 * MACs for conv/linear)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(*(x if isinstance(x, tuple) else (x,)))
    total = counter.get_total_flops()
    assert total % 2 == 0
    return total // 2


@pytest.mark.parametrize("arch, n_tensors, n_weights, macs, distinct", [
    ("resnet20", 20, 268_336, 40_551_040, {1024, 256, 64, 1}),
    ("mobilenetv1", 28, 4_209_088, 568_740_352, {12544, 3136, 784, 196, 49, 1}),
    ("resnet50", 54, 25_502_912, 4_089_184_256, {12544, 3136, 784, 196, 49, 1}),
    ("mnist_mlp", 3, 32_360, 32_360, {1}),
    ("mnist_cnn", 4, 46_608, 1_083_008, {576, 64, 1}),
    ("mnist_bn_cnn", 5, 65_808, 1_298_304, {784, 196, 25, 1}),
])
def test_check_values(arch, n_tensors, n_weights, macs, distinct):
    model, x = build_model(arch, device="meta"), example_input(arch, device="meta")
    layers = prunable_layers(model, x)
    assert len(layers) == n_tensors
    assert dense_nnz(layers) == n_weights
    assert dense_flops(layers) == macs
    assert {l.flops_per_weight for l in layers} == distinct
    assert counter_macs(model, x) == macs
    # names are the modules' qualified names, in module order
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [l.name for l in layers] == names


def test_rounded_published_values():
    macs = {a: dense_flops(prunable_layers(build_model(a, device="meta"), example_input(a, device="meta")))
            for a in ("resnet20", "mobilenetv1", "resnet50")}
    assert round(macs["resnet20"] / 1e6, 2) == 40.55
    assert round(macs["mobilenetv1"] / 1e6, 1) == 568.7
    assert round(macs["resnet50"] / 1e9, 3) == 4.089


def test_resnet50_cpu_batch2_same_costs():
    model = build_model("resnet50", seed=0)
    layers = prunable_layers(model, example_input("resnet50", batch=2))
    assert dense_flops(layers) == 4_089_184_256
    down = [l for l in layers if "downsample" in l.name]
    assert [l.name for l in down] == [f"layer{i}.0.downsample.0" for i in (1, 2, 3, 4)]
    assert [l.flops_per_weight for l in down] == [3136, 784, 196, 49]


class Odd(nn.Module):
    """Strided, dilated, grouped, depthwise and 1-D convs, a token linear, a reused module."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.dil = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.dw = nn.Conv2d(8, 8, 5, stride=(1, 2), groups=8, bias=False)
        self.c1d = nn.Conv1d(8, 6, 3, stride=2, dilation=3)
        self.tok = nn.Linear(6, 4)
        self.shared = nn.Linear(4, 4, bias=False)

    def forward(self, x):
        x = self.dw(self.dil(self.c1(x)))            # (N, 8, H, W)
        x = x.flatten(2)                             # (N, 8, H*W)
        x = self.c1d(x).transpose(1, 2)              # (N, T, 6) tokens
        x = self.shared(self.shared(self.tok(x)))    # used twice
        return x.sum()


def test_odd_layers_against_counter_and_by_hand():
    model = Odd()
    x = torch.randn(3, 3, 33, 40)
    layers = prunable_layers(model, x)
    f = {l.name: l.flops_per_weight for l in layers}
    assert f["c1"] == 17 * 20
    assert f["dil"] == 17 * 20
    assert f["dw"] == 13 * 8
    t = (13 * 8 - 3 * 2 - 1) // 2 + 1
    assert f["c1d"] == t and f["tok"] == t and f["shared"] == 2 * t
    assert layers[2].n_weights == 8 * 1 * 25
    assert dense_flops(layers) == counter_macs(model, x) // 3  # counter counts the whole batch


class DataDependent(nn.Module):
    """Cannot run on the meta device (a Python branch on a value): the real pass is used."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, stride=2)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        x = self.conv(x)
        if float(x.sum()) > -1e9:
            x = x.mean((2, 3))
        return self.fc(x)


def test_data_dependent_forward_falls_back_to_real_pass():
    model = DataDependent().train()
    layers = prunable_layers(model, torch.zeros(2, 1, 9, 9))
    assert [(l.name, l.flops_per_weight) for l in layers] == [("conv", 16), ("fc", 1)]
    assert model.training


def test_unbatched_linear_and_batch_size():
    model = nn.Sequential(nn.Linear(5, 3))
    assert prunable_layers(model, torch.zeros(5))[0].flops_per_weight == 1
    assert prunable_layers(model, torch.zeros(4, 7, 5))[0].flops_per_weight == 7
    assert prunable_layers(model, torch.zeros(4, 7, 5), batch_size=1)[0].flops_per_weight == 28
    with pytest.raises(InputShapeError, match=r"^module '0' was applied at 28 positions, not a multiple of `batch_size` = 3$"):
        prunable_layers(model, torch.zeros(4, 7, 5), batch_size=3)


def test_tied_weights_listed_once():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b)
    layers = prunable_layers(model, torch.zeros(2, 4))
    assert [(l.name, l.flops_per_weight) for l in layers] == [("0", 2)]


def test_include_variants():
    model = build_model("mnist_cnn")
    x = example_input("mnist_cnn")
    assert [l.name for l in prunable_layers(model, x, include=[nn.Conv2d])] == ["conv1", "conv2"]
    assert [l.name for l in prunable_layers(model, x, include=["fc2", "conv1"])] == ["conv1", "fc2"]
    assert [l.name for l in prunable_layers(model, x, include=lambda n, m: n != "fc2")] == ["conv1", "conv2", "fc1"]
    with pytest.raises(ModelError, match=r"^`include` names module 'nope', which MNISTCNN does not have$"):
        prunable_layers(model, x, include=["nope"])
    with pytest.raises(ModelError, match=r"^`include` type ReLU is not supported"):
        prunable_layers(model, x, include=[nn.ReLU])
    with pytest.raises(ModelError, match=r"^`include` must be None, module types, module names or a callable"):
        prunable_layers(model, x, include=[1, 2])
    with pytest.raises(NoPrunableLayerError, match=r"^MNISTCNN has no prunable layer \(Conv1d/Conv2d/Linear weight matching `include`\)$"):
        prunable_layers(model, x, include=lambda n, m: False)


def test_errors():
    with pytest.raises(NoPrunableLayerError, match=r"^Sequential has no prunable layer \(Conv1d/Conv2d/Linear weight\)$"):
        prunable_layers(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), torch.zeros(2, 3))
    with pytest.raises(InputShapeError, match=r"^`example_input` of shape \(1, 3, 28, 28\) does not fit MNISTMLP: "):
        prunable_layers(build_model("mnist_mlp"), torch.zeros(1, 3, 28, 28))
    with pytest.raises(ModelError, match=r"^module '0' \(ConvTranspose2d\) is not supported"):
        prunable_layers(nn.Sequential(nn.ConvTranspose2d(2, 2, 3)), torch.zeros(1, 2, 5, 5),
                        include=["0"])
    with pytest.raises(ModelError, match=r"^unknown architecture 'vgg'; known: resnet20, mobilenetv1"):
        build_model("vgg")


def test_flat_weights_round_trip():
    model = build_model("mnist_cnn", seed=1)
    layers = prunable_layers(model, example_input("mnist_cnn"))
    w = flat_weights(layers)
    off = layer_offsets(layers)
    assert w.shape == (off[-1],) and list(flops_vector(layers)) == [576.0, 576.0 / 9, 1.0, 1.0]
    assert torch.equal(w[off[1]:off[2]], model.conv2.weight.detach().reshape(-1))
    set_flat_weights(layers, -w)
    assert torch.equal(model.fc1.weight.detach(), -split_flat(layers, w)[2])
    with pytest.raises(ModelError, match=r"^flat vector must have shape \(46608,\); got \(3,\)$"):
        split_flat(layers, torch.zeros(3))


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv1", "resnet50"])
def test_matches_torch_free_layer_tables(arch):
    from falcon_milp.synthetic import layer_table
    layers = prunable_layers(build_model(arch, device="meta"), example_input(arch, device="meta"))
    ours = [(l.name, l.n_weights, l.flops_per_weight, math.prod(l.shape[1:])) for l in layers]
    assert ours == [tuple(row) for row in layer_table(arch)]
