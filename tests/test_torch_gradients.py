"""Per-sample gradients (torch.func vmap of grad) against a plain autograd loop."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from falcon_milp.torch import InputShapeError, ModelError
from falcon_milp.torch.architectures import ResNet20, build_model, example_input
from falcon_milp.torch.flops import dense_nnz, prunable_layers
from falcon_milp.torch.gradients import default_chunk_size, iter_per_sample_grads, per_sample_grads
from falcon_milp.torch.masks import apply_mask


def loop_grads(model, layers, x, y, loss=None):
    loss = loss or (lambda o, t: F.cross_entropy(o, t, reduction="sum"))
    model.eval()
    rows = []
    for k in range(x.shape[0]):
        ws = [l.weight for l in layers]
        g = torch.autograd.grad(loss(model(x[k:k + 1]), y[k:k + 1]), ws)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("arch", ["mnist_mlp", "mnist_cnn", "resnet20"])
def test_matches_loop(arch):
    torch.manual_seed(0)
    # resnet20: its 1-block-per-stage variant (same layers: option-A shortcuts, BatchNorm), for speed
    model = ResNet20(blocks=1) if arch == "resnet20" else build_model(arch, seed=0)
    if arch == "resnet20":  # non-trivial BatchNorm statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 3, 32, 32))
    model.train()
    x = torch.randn(3, *example_input(arch).shape[1:])
    y = torch.randint(0, 10, (3,))
    layers = prunable_layers(model, x[:1])
    X = per_sample_grads(model, x, y, layers, chunk_size=2)
    assert X.dtype == torch.float32 and X.shape == (3, dense_nnz(layers))
    assert model.training  # mode restored
    ref = loop_grads(model, layers, x, y)
    torch.testing.assert_close(X, ref, rtol=1e-4, atol=1e-5)


def test_masked_model_gives_effective_gradients_and_custom_loss():
    model = build_model("mnist_mlp", seed=1)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    layers = prunable_layers(model, x[:1])
    mask = np.random.default_rng(0).random(dense_nnz(layers)) < 0.3
    apply_mask(layers, mask)
    loss = lambda o, t: 0.5 * ((o - torch.eye(10)[t]) ** 2).sum()
    X = per_sample_grads(model, x, y, layers, loss_fn=loss)
    assert torch.count_nonzero(X[:, torch.from_numpy(~mask)]) > 0  # pruned entries have gradients
    remove = build_model("mnist_mlp")  # same effective weights, no parametrization
    remove.load_state_dict({f"{l.name}.weight": l.weight.detach() for l in layers})
    ref = loop_grads(remove, prunable_layers(remove, x[:1]), x, y, loss)
    torch.testing.assert_close(X, ref, rtol=1e-4, atol=1e-6)


def test_generator_chunks_and_grad_mode():
    model = build_model("mnist_cnn", seed=2)
    x, y = torch.randn(7, 1, 28, 28), torch.randint(0, 10, (7,))
    full = per_sample_grads(model, x, y)
    starts = []
    for start, g in iter_per_sample_grads(model, x, y, chunk_size=3):
        assert torch.is_grad_enabled()  # the caller never runs inside no_grad
        starts.append(start)
        torch.testing.assert_close(g, full[start:start + g.shape[0]])
    assert starts == [0, 3, 6]
    sub = prunable_layers(model, x[:1], include=["fc2"])
    assert per_sample_grads(model, x, y, sub).shape == (7, 640)
    torch.testing.assert_close(per_sample_grads(model, x, y, sub), full[:, -640:])
    assert default_chunk_size(25_502_912) == 1 and default_chunk_size(100) == 256


def test_errors():
    model = build_model("mnist_mlp")
    x = torch.randn(3, 1, 28, 28)
    with pytest.raises(InputShapeError, match=r"^`inputs` has 3 examples but `targets` has 2$"):
        per_sample_grads(model, x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(InputShapeError, match=r"^`inputs` must hold at least one example; got 0$"):
        per_sample_grads(model, x[:0], torch.zeros(0, dtype=torch.long))
    with pytest.raises(InputShapeError, match=r"^`chunk_size` must be >= 1; got 0$"):
        per_sample_grads(model, x, torch.zeros(3, dtype=torch.long), chunk_size=0)
    layers = prunable_layers(model, x[:1])
    with pytest.raises(InputShapeError, match=r"^per-sample gradients failed for inputs of shape \(3, 1, 28, 28\) and targets of shape \(3,\): index 12 is out of bounds"):
        per_sample_grads(model, x, torch.full((3,), 12), layers)
    other = prunable_layers(build_model("mnist_mlp"), x[:1])
    with pytest.raises(ModelError, match=r"^layer 'fc1' is not a module of MNISTMLP$"):
        per_sample_grads(model, x, torch.zeros(3, dtype=torch.long), other)
    lin = nn.Linear(4, 2)
    torch.nn.utils.parametrize.register_parametrization(lin, "weight", nn.Identity())
    with pytest.raises(ModelError, match=r"^layer '' has a parametrization other than WeightMask"):
        per_sample_grads(lin, torch.randn(2, 4), torch.zeros(2, dtype=torch.long))
