"""Architecture-shaped synthetic instances: layer tables, budgets, determinism, bad input."""
import math

import numpy as np
import pytest

from falcon_milp import OptionError
from falcon_milp.synthetic import ARCHS, arch_instance, dense_totals, layer_table, random_layered

# (prunable weights, tensors, dense MACs, distinct FLOP costs) from falcon-method.md
EXPECTED = {
    "resnet20": (268_336, 20, 40_551_040, {1024, 256, 64, 1}),
    "mobilenetv1": (4_209_088, 28, 568_740_352, {12544, 3136, 784, 196, 49, 1}),
    "resnet50": (25_502_912, 54, 4_089_184_256, {12544, 3136, 784, 196, 49, 1}),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_table_totals(arch):
    rows = layer_table(arch)
    p, n_tensors, macs, costs = EXPECTED[arch]
    assert len(rows) == n_tensors
    assert dense_totals(arch) == (p, macs)
    assert {r[2] for r in rows} == costs
    assert len({r[0] for r in rows}) == n_tensors            # unique names
    for name, n, f, fan_in in rows:
        assert isinstance(name, str) and n > 0 and f >= 1 and fan_in >= 1
        assert n % fan_in == 0                                # n = out_channels * fan_in


def test_layer_tables_follow_the_architectures():
    r50 = {name: (n, f, fan_in) for name, n, f, fan_in in layer_table("resnet50")}
    assert r50["conv1"] == (9408, 12544, 147)                 # 7x7x3x64 at 112x112
    assert r50["layer2.0.conv1"] == (32768, 3136, 256)        # v1.5: 1x1 before the stride
    assert r50["layer2.0.conv2"] == (147456, 784, 1152)       # stride on the 3x3
    assert r50["layer2.0.downsample.0"] == (131072, 784, 256)
    assert r50["fc"] == (2_048_000, 1, 2048)
    assert sum(1 for name in r50 if "downsample" in name) == 4
    mb = {name: (n, f, fan_in) for name, n, f, fan_in in layer_table("mobilenetv1")}
    assert mb["blocks.0.dw"] == (288, 12544, 9)               # depthwise 3x3 on 32 channels
    assert mb["blocks.12.pw"] == (1_048_576, 49, 1024)
    r20 = [row[0] for row in layer_table("resnet20")]
    assert r20[0] == "conv1" and r20[-1] == "fc" and not any("downsample" in n for n in r20)


def test_arch_instance_budgets_and_dtype():
    inst = arch_instance("resnet20", 0.3, 0.2, seed=5)
    p, macs = dense_totals("resnet20")
    assert inst.n_weights == p and inst.n_groups == 20
    assert inst.max_nnz == math.floor(0.3 * p)
    assert inst.max_flops == pytest.approx(0.2 * macs, rel=1e-15)
    assert inst.importance.dtype == np.float32
    assert inst.names == tuple(r[0] for r in layer_table("resnet20"))
    assert np.all(inst.importance >= 0)
    assert arch_instance("resnet20", 1.0, 1.0, dtype=np.float64).importance.dtype == np.float64


def test_arch_instance_scale_follows_fan_in():
    inst = arch_instance("resnet20", 0.5, 0.5, seed=1)
    for name, imp, (_, n, _, fan_in) in zip(inst.names, inst.importances, layer_table("resnet20")):
        # E[w^2] = 1 / fan_in; layers have >= 432 weights, so the mean is within ~20%
        assert np.mean(imp, dtype=np.float64) * fan_in == pytest.approx(1.0, rel=0.25), name


def test_deterministic_and_seed_dependent():
    a = arch_instance("resnet20", 0.1, 0.1, seed=3)
    b = arch_instance("resnet20", 0.1, 0.1, seed=3)
    c = arch_instance("resnet20", 0.1, 0.1, seed=4)
    assert np.array_equal(a.importance, b.importance)
    assert not np.array_equal(a.importance, c.importance)
    r1, r2 = random_layered(5000, 7, seed=2), random_layered(5000, 7, seed=2)
    assert np.array_equal(r1.importance, r2.importance) and np.array_equal(r1.costs, r2.costs)


@pytest.mark.parametrize("n,L", [(1, 1), (10, 10), (12345, 7), (100_000, 40)])
def test_random_layered_shape(n, L):
    inst = random_layered(n, L, seed=0, nnz_fraction=0.25, flops_fraction=0.5)
    assert inst.n_weights == n and inst.n_groups == L
    assert np.all(inst.group_sizes >= 1)
    assert inst.max_nnz == math.floor(0.25 * n)
    if L > 1:
        assert inst.flops_per_weight[-1] == 1.0
        assert np.all(np.diff(inst.flops_per_weight[:-1]) <= 0)   # costs step down with depth


@pytest.mark.parametrize("call,match", [
    (lambda: layer_table("vgg16"), r"`arch` must be one of 'resnet20', 'mobilenetv1', 'resnet50'; got 'vgg16'"),
    (lambda: arch_instance("resnet20", 1.5, 0.1), r"`nnz_fraction` must be in \[0, 1\]; got 1.5"),
    (lambda: arch_instance("resnet20", 0.1, -0.1), r"`flops_fraction` must be in \[0, 1\]; got -0.1"),
    (lambda: arch_instance("resnet20", 0.1, "a"), r"`flops_fraction` must be in \[0, 1\]; got 'a'"),
    (lambda: arch_instance("resnet20", 0.1, 0.1, dtype=np.int32), r"`dtype` must be float32 or float64"),
    (lambda: arch_instance("resnet20", 0.1, 0.1, seed=-1), r"`seed` must be an integer >= 0; got -1"),
    (lambda: random_layered(0, 1), r"`n_weights` must be an integer >= 1; got 0"),
    (lambda: random_layered(10, 0), r"`n_layers` must be an integer >= 1; got 0"),
    (lambda: random_layered(5, 6), r"`n_layers` must be <= n_weights \(5\); got 6"),
    (lambda: random_layered(5, 2, seed=1.5), r"`seed` must be an integer >= 0; got 1.5"),
])
def test_bad_input_messages(call, match):
    with pytest.raises(OptionError, match=match):
        call()
