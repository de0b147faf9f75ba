"""BatchNorm re-estimation, the validation referee, the layer-scale search, support swaps."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from falcon_milp.torch import OptionError
from falcon_milp.torch.batchnorm import has_batchnorm, recalibrate_batchnorm
from falcon_milp.torch.dfo import Projector, dfo, refine_support
from falcon_milp.torch.flops import flat_weights, prunable_layers
from falcon_milp.torch.quadratic import QuadraticModel
from falcon_milp.torch.referee import (Referee, calibrated_loss, mean_loss, search_layer_scales,
                                       split_calibration)


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(F.relu(self.bn(self.conv(x))), 1)))


def data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen) * 2 + 1, torch.randint(0, 3, (n,), generator=gen)


def test_recalibration_gives_the_statistics_of_the_inputs_and_restores_modes():
    torch.manual_seed(0)
    model = BNNet().eval()
    x, _ = data()
    with torch.no_grad():
        model.conv.weight.mul_(3.0)                    # "pruning" changed the activations
        z = model.conv(x)
    assert recalibrate_batchnorm(model, x, batch_size=16) == 1
    mean = z.mean(dim=(0, 2, 3))
    # cumulative average of the per-batch unbiased variances (momentum=None)
    var = torch.stack([z[s:s + 16].var(dim=(0, 2, 3), unbiased=True) for s in range(0, 64, 16)]).mean(0)
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var, var, rtol=1e-4)
    assert not model.training and not model.bn.training and not model.drop.training
    assert model.bn.momentum == 0.1
    assert has_batchnorm(model) and not has_batchnorm(nn.Linear(2, 2))
    assert recalibrate_batchnorm(nn.Linear(3, 2), torch.zeros(4, 3)) == 0


def test_recalibration_errors():
    model = BNNet()
    with pytest.raises(OptionError, match=r"`inputs` for BatchNorm re-estimation must hold >= 2 examples; got \(1, 1, 8, 8\)"):
        recalibrate_batchnorm(model, torch.zeros(1, 1, 8, 8))
    with pytest.raises(OptionError, match=r"`batch_size` must be an integer >= 2; got 1"):
        recalibrate_batchnorm(model, torch.zeros(4, 1, 8, 8), batch_size=1)


def test_split_is_disjoint_and_sized():
    x = torch.arange(1000).float().view(-1, 1)
    y = torch.zeros(1000, dtype=torch.int64)
    (xt, _), (xv, _) = split_calibration((x, y), 0.2, seed=3)
    assert xv.shape[0] == 256 and xt.shape[0] == 744            # min(256, N // 2) > 0.2 N
    assert not set(xt.view(-1).tolist()) & set(xv.view(-1).tolist())
    (xt, _), (xv, _) = split_calibration((x.repeat(5, 1), y.repeat(5)), 0.2)
    assert xv.shape[0] == 1000
    assert split_calibration((x, y), 0.0)[1] is None
    assert split_calibration((x[:3], y[:3]), 0.2)[1] is None


def test_calibrated_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=gen) * 8
    y = torch.randint(0, 5, (200,), generator=gen)
    plain = float(F.cross_entropy(logits, y))
    cal = calibrated_loss(logits, y)
    assert cal <= plain + 1e-12
    # the best temperature, found by brute force, agrees
    grid = min(float(F.cross_entropy(logits / t, y)) for t in np.exp(np.linspace(-6, 6, 4001)))
    assert cal == pytest.approx(grid, rel=1e-4)
    # constant logits score the entropy of the labels (log 5 for balanced labels)
    yb = torch.arange(200) % 5
    assert calibrated_loss(torch.zeros(200, 5), yb) == pytest.approx(math.log(5), rel=1e-9)


def test_referee_judges_and_keeps_the_best():
    torch.manual_seed(1)
    model = BNNet().eval()
    x, y = data(96)
    layers = prunable_layers(model, x[:1])
    w0 = flat_weights(layers, torch.float64).numpy()
    ref = Referee(model, layers, (x[64:], y[64:]), bn_inputs=x[:64])
    full = np.ones(w0.size, dtype=bool)
    v_full = ref(w0, full, "dense")
    zero = np.zeros(w0.size, dtype=bool)
    v_zero = ref(w0, zero, "empty")
    assert ref.n_evals == 2 and [c["candidate"] for c in ref.log] == ["dense", "empty"]
    best = "dense" if v_full.score < v_zero.score else "empty"
    w, mask, label = ref.write_best()
    assert label == best
    assert torch.allclose(flat_weights(layers, torch.float64), torch.from_numpy(np.where(mask, w, 0.0)))
    ref.reset()
    assert ref.best is None and ref.log == []
    ref(w0, full, "")                        # unlabelled probes never become the answer
    assert ref.best is None
    v = mean_loss(model, (x[64:], y[64:]), criterion="accuracy")
    assert v.score == pytest.approx(1 - v.accuracy + v.loss * 1e-6)
    with pytest.raises(OptionError, match=r"`criterion` must be one of 'calibrated-loss', 'loss', 'accuracy'; got 'f1'"):
        Referee(model, layers, (x, y), criterion="f1")


def test_layer_scale_search_finds_the_allocation_the_judge_wants():
    """Two groups; the judge wants 30 weights of the second group kept (out of a budget of 40),
    which the plain importances (first group 10x larger) never give."""
    rng = np.random.default_rng(0)
    sizes = [50, 50]
    base = np.concatenate([10 + rng.random(50), rng.random(50)])
    proj = Projector(sizes, [1.0, 1.0], 40, None, solver="fast")

    def judge(mask):
        return abs(int(mask[50:].sum()) - 30)

    res = search_layer_scales(judge, proj, base, sizes)          # steps down to 1/4 in log2
    assert res.loss_start == 30 and res.loss <= 1 and res.history[0] == 30
    fine = search_layer_scales(judge, proj, base, sizes, steps=[2.0 ** -k for k in range(-2, 8)])
    assert fine.loss == 0 and int(fine.mask.sum()) <= 40 and int(fine.mask[50:].sum()) == 30
    assert fine.n_evals <= 200 and fine.history[-1] == 0
    few = search_layer_scales(judge, proj, base, sizes, max_evals=3)
    assert few.n_evals <= 3


def problem(seed, n=30, sizes=(40, 60)):
    rng = np.random.default_rng(seed)
    p = sum(sizes)
    X = rng.standard_normal((n, p)) / math.sqrt(n)
    X[:, :5] *= 20                                          # an ill-conditioned Fisher
    return QuadraticModel(X, rng.standard_normal(p), 0.01), list(sizes)


@pytest.mark.parametrize("seed", range(3))
def test_linesearch_dfo_and_support_swaps_descend_and_stay_feasible(seed):
    from falcon_milp import check_mask
    m, sizes = problem(seed)
    proj = Projector(sizes, [5.0, 1.0], 30, 90.0, solver="exact")
    res = dfo(m, proj, max_iter=30, step="linesearch")
    assert np.all(np.diff(res.history) <= 1e-12 * np.abs(np.array(res.history[:-1])))
    ss = refine_support(m, proj, res.w, res.mask, group_sizes=sizes, iters=5)
    assert ss.objective <= ss.objective_start + 1e-12
    assert ss.objective == pytest.approx(m.value(ss.w), rel=1e-9)
    assert np.all(ss.w[~ss.mask] == 0)
    assert check_mask(proj.instance(np.ones(m.p)), ss.mask).feasible
