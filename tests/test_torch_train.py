"""Training loop determinism, random shifts, and the bundled MNIST networks' test accuracy."""
import json
from importlib import resources
from pathlib import Path

import pytest
import torch

from falcon_milp.torch import DataFileError, ModelError, OptionError
from falcon_milp.torch.architectures import build_model, load_pretrained, pretrained_path
from falcon_milp.torch.data import BUNDLED_MNIST, load_mnist, load_mnist_5k, subset
from falcon_milp.torch.train import evaluate, random_shift, train_classifier

MNIST_DIR = BUNDLED_MNIST      # the test set ships with the package (no ../shared needed)


def test_bundled_models_accuracy_on_test_set():
    meta = json.loads(resources.files("falcon_milp").joinpath("data", "models.json").read_text())
    x, y = load_mnist(MNIST_DIR, "test")
    for arch, floor in (("mnist_mlp", 0.95), ("mnist_cnn", 0.98), ("mnist_bn_cnn", 0.985)):
        acc = evaluate(load_pretrained(arch), x, y)
        assert acc >= floor
        assert acc == pytest.approx(meta[arch]["test_accuracy"], abs=0.002)
        assert Path(pretrained_path(arch)).stat().st_size < 300_000


def test_training_is_deterministic_and_learns():
    x, y = subset(*load_mnist_5k(), 300, seed=0)
    runs = []
    for _ in range(2):
        model = build_model("mnist_mlp", seed=1)
        hist = train_classifier(model, x, y, epochs=3, batch_size=50, max_shift=1, seed=4)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert hist[-1]["loss"] < hist[0]["loss"] and [h["epoch"] for h in hist] == [1, 2, 3]
    assert not model.training


def test_random_shift_moves_pixels():
    x = torch.zeros(2, 1, 5, 5) - 1.0
    x[:, 0, 2, 2] = 3.0
    gen = torch.Generator().manual_seed(0)
    out = random_shift(x, 1, gen)
    assert out.shape == x.shape and (out == 3.0).sum() == 2 and (out == -1.0).sum() == 48
    assert torch.equal(random_shift(x, 0, gen), x)


def test_errors():
    model = build_model("mnist_mlp")
    x, y = torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)
    with pytest.raises(OptionError, match=r"^`epochs` must be an integer >= 1; got 0$"):
        train_classifier(model, x, y, epochs=0)
    with pytest.raises(OptionError, match=r"^`batch_size` must be an integer >= 1; got 2.5$"):
        train_classifier(model, x, y, batch_size=2.5)
    with pytest.raises(OptionError, match=r"^`lr` must be a finite number > 0; got -1$"):
        train_classifier(model, x, y, lr=-1)
    with pytest.raises(DataFileError, match=r"^no bundled weights for architecture 'resnet20'; bundled: mnist_bn_cnn, mnist_cnn, mnist_mlp$"):
        load_pretrained("resnet20")
    with pytest.raises(ModelError, match=r"^unknown architecture 'x'; known: "):
        pretrained_path("x")
