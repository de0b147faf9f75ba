"""Importance scores: magnitude, OBS/WoodFisher (Woodbury vs dense inverse), FlexRel (vs explicit LRP-0)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from falcon_milp.torch import OptionError
from falcon_milp.torch.architectures import build_model
from falcon_milp.torch.flops import dense_nnz, flat_weights, prunable_layers
from falcon_milp.torch.gradients import per_sample_grads, summed_grad
from falcon_milp.torch.importance import (FlexRelImportance, MagnitudeImportance, OBSImportance,
                                          get_importance, obs_inverse_diagonal, relevance)


@pytest.mark.parametrize("n, p, lam2", [(7, 40, 1e-3), (30, 10, 1e-6), (12, 12, 0.5), (1, 3, 1e-2),
                                         (20, 23, 1e-4)])
def test_woodbury_matches_dense_inverse(n, p, lam2):
    rng = np.random.default_rng(n * p)
    X = rng.standard_normal((n, p)).astype(np.float32) * rng.uniform(0.1, 10, p).astype(np.float32)
    dense = np.diag(np.linalg.inv(X.astype(np.float64).T @ X + 2 * lam2 * np.eye(p)))
    got = obs_inverse_diagonal(torch.from_numpy(X), lam2, block=7)
    np.testing.assert_allclose(got, dense, rtol=1e-7)
    assert got.dtype == np.float64 and got.shape == (p,)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                         nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))


def test_obs_on_tiny_model_against_dense_hessian():
    model = tiny_mlp()
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    layers = prunable_layers(model, x[:1])
    lam2 = 1e-3
    scores = OBSImportance(lam2=lam2)(model, layers, (x, y))
    G = per_sample_grads(model, x, y, layers).double() / 3.0  # 1/sqrt(n)
    H = G.T @ G + 2 * lam2 * torch.eye(G.shape[1], dtype=torch.float64)
    w = flat_weights(layers, torch.float64)
    ref = (w ** 2 / torch.linalg.inv(H).diagonal()).numpy()
    np.testing.assert_allclose(scores, ref, rtol=1e-6)
    assert scores.shape == (dense_nnz(layers),) and (scores >= 2 * lam2 * w.numpy() ** 2 * (1 - 1e-9)).all()


def test_magnitude():
    model = build_model("mnist_cnn", seed=0)
    layers = prunable_layers(model, torch.zeros(1, 1, 28, 28))
    s = MagnitudeImportance()(model, layers)
    assert s.dtype == np.float64
    assert np.array_equal(s, flat_weights(layers).double().numpy() ** 2)


def explicit_lrp0(model, x, y):
    """LRP-0 messages a_j w_oj R_o / z_o of a bias-free ReLU MLP, summed over examples."""
    lins = [m for m in model if isinstance(m, nn.Linear)]
    total = [torch.zeros_like(l.weight, dtype=torch.float64) for l in lins]
    for k in range(x.shape[0]):
        acts, a = [], x[k].double()
        for i, l in enumerate(lins):
            acts.append(a)
            z = l.weight.double() @ a
            a = torch.relu(z) if i < len(lins) - 1 else z
        R = torch.zeros_like(a)
        R[y[k]] = a[y[k]]  # relevance starts as the target logit
        for i in reversed(range(len(lins))):
            W, a_in = lins[i].weight.double(), acts[i]
            z = W @ a_in
            s = torch.where(z != 0, R / z, torch.zeros_like(z))
            total[i] += W * a_in[None, :] * s[:, None]       # message j -> o
            R = a_in * (W.T @ s)                              # relevance of the inputs
    return torch.cat([t.reshape(-1) for t in total]).abs().detach().numpy()


def test_relevance_equals_explicit_lrp0_and_flexrel_mix():
    model = tiny_mlp(1)
    x, y = torch.randn(6, 6), torch.randint(0, 3, (6,))
    layers = prunable_layers(model, x[:1])
    rel = relevance(model, layers, (x, y), batch_size=4)
    np.testing.assert_allclose(rel, explicit_lrp0(model, x, y), rtol=1e-5, atol=1e-7)  # float32 sums
    delta = 0.3
    score = FlexRelImportance(delta=delta, batch_size=4)(model, layers, (x, y))
    mag = flat_weights(layers).double().numpy() ** 2
    np.testing.assert_allclose(score, 0.7 * mag / mag.sum() + delta * rel / rel.sum(), rtol=1e-10)
    np.testing.assert_allclose(FlexRelImportance(delta=0.0)(model, layers), mag / mag.sum())
    pred = relevance(model, layers, (x, model(x).argmax(1)))
    np.testing.assert_allclose(relevance(model, layers, (x, y), target="predicted"), pred)


def test_summed_grad_is_column_sum_of_X():
    model = build_model("mnist_cnn", seed=3)
    x, y = torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))
    g = summed_grad(model, x, y, batch_size=2)
    torch.testing.assert_close(g.float(), per_sample_grads(model, x, y).sum(0), rtol=1e-4, atol=1e-6)


def test_factory_and_errors():
    assert get_importance("obs", lam2=0.1).options()["lam2"] == 0.1
    assert get_importance("flexrel").options()["delta"] == 0.5
    assert get_importance("magnitude").kind == "magnitude"
    model = tiny_mlp()
    layers = prunable_layers(model, torch.zeros(1, 6))
    with pytest.raises(OptionError, match=r"^unknown importance 'snip'; known: magnitude, obs, flexrel$"):
        get_importance("snip")
    with pytest.raises(OptionError, match=r"^importance 'magnitude': MagnitudeImportance\(\) takes no arguments$"):
        get_importance("magnitude", delta=0.5)
    with pytest.raises(OptionError, match=r"^`delta` must be in \[0, 1\]; got 1.5$"):
        FlexRelImportance(delta=1.5)
    with pytest.raises(OptionError, match=r"^`target` must be 'label' or 'predicted'; got 'x'$"):
        FlexRelImportance(target="x")
    with pytest.raises(OptionError, match=r"^`lam2` must be a finite number > 0; got 0$"):
        OBSImportance(lam2=0)
    with pytest.raises(OptionError, match=r"^`lam2` must be a finite number > 0; got -1.0$"):
        obs_inverse_diagonal(np.ones((2, 2)), -1.0)
    with pytest.raises(OptionError, match=r"^`X` must be a 2-D \(n, p\) array; got shape \(3,\)$"):
        obs_inverse_diagonal(np.ones(3), 1.0)
    with pytest.raises(OptionError, match=r"^importance 'obs' needs calibration `data` \(inputs, targets\)$"):
        OBSImportance()(model, layers)
    with pytest.raises(OptionError, match=r"^`data` must be a pair of tensors \(inputs, targets\); got list$"):
        FlexRelImportance()(model, layers, [1, 2, 3])
    with pytest.raises(OptionError, match=r"^`target` must be 'label' or 'predicted'; got 'y'$"):
        relevance(model, layers, (torch.zeros(1, 6), torch.zeros(1, dtype=torch.long)), target="y")
