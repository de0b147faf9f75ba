"""`falcon-milp export`: bundled and checkpoint models, calibration data, one-line errors (exit 2)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from falcon_milp import load_instance
from falcon_milp.cli import main
from falcon_milp.torch.architectures import build_model


def run_cli(argv):
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_commands_module_does_not_import_torch():
    code = ("import sys, falcon_milp.cli, falcon_milp.torch.export_command as c; "
            "p = falcon_milp.cli.build_parser(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_export_bundled_obs(tmp_path, capsys):
    out = tmp_path / "mlp_obs.npz"
    assert main(["export", "--arch", "mnist_mlp", "--importance", "obs", "--n-samples", "40",
                 "--flops-fraction", "0.3", "--nnz-fraction", "0.5", "-o", str(out)]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {out}: 32,360 weights in 3 groups, importance obs, budgets nnz 16,180 (50.0%)")
    inst = load_instance(out)
    assert inst.names == ("fc1", "fc2", "fc3") and inst.max_flops == pytest.approx(0.3 * 32_360)
    meta = inst.metadata
    assert meta["arch"] == "mnist_mlp" and meta["importance"] == "obs" and meta["n_calibration"] == 40
    assert meta["calibration_data"] == "mnist5k" and meta["checkpoint"].endswith("mnist_mlp.pt")


def test_export_checkpoint_and_random_data(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    model = build_model("mnist_cnn", seed=5)
    torch.save({"state_dict": model.state_dict()}, ckpt)
    out = tmp_path / "cnn.npz"
    assert main(["export", "--arch", "mnist_cnn", "--checkpoint", str(ckpt), "--importance", "flexrel",
                 "--delta", "0.2", "--data", "random", "--n-samples", "16", "-o", str(out)]) == 0
    inst = load_instance(out)
    assert inst.max_nnz == 46_608 and inst.metadata["importance_options"]["delta"] == 0.2
    w2 = np.concatenate([model.state_dict()[f"{n}.weight"].reshape(-1).numpy() ** 2 for n in inst.names])
    assert not np.allclose(inst.importance, 0.8 * w2 / w2.sum())  # relevance term present
    assert main(["export", "--arch", "resnet20", "--random-init", "--flops-fraction", "1",
                 "--float64", "-o", str(tmp_path / "r20")]) == 0
    r20 = load_instance(tmp_path / "r20.npz")
    assert r20.importance.dtype == np.float64 and r20.n_groups == 20


@pytest.mark.parametrize("argv, message", [
    (["--arch", "mnist_mlp", "--flops-fraction", "1.5"], r"`flops_fraction` must be in \[0, 1\]; got 1.5"),
    (["--arch", "mnist_mlp", "--nnz-fraction", "-0.5"], r"`nnz_fraction` must be in \[0, 1\]; got -0.5"),
    (["--arch", "resnet50"], r"`--checkpoint` is required for arch 'resnet50' \(no bundled weights\); or pass --random-init"),
    (["--arch", "mnist_cnn", "--checkpoint", "{mlp}"], r"checkpoint '.*mlp\.pt' does not match MNISTCNN: key 'conv1\.weight' is missing"),
    (["--arch", "mnist_mlp", "--checkpoint", "{ckpt}"], r"checkpoint '.*cnn\.pt' does not match MNISTMLP: key 'fc1\.weight' has shape \(64, 512\) in the checkpoint but \(40, 784\) in the model"),
    (["--arch", "mnist_cnn", "--checkpoint", "{bad_shape}"], r"checkpoint '.*shape\.pt' does not match MNISTCNN: key 'fc2\.weight' has shape \(9, 64\) in the checkpoint but \(10, 64\) in the model"),
    (["--arch", "mnist_cnn", "--checkpoint", "{extra}"], r"checkpoint '.*extra\.pt' does not match MNISTCNN: unexpected key 'head\.weight'"),
    (["--arch", "mnist_cnn", "--checkpoint", "{tmp}/none.pt"], r"checkpoint '.*none\.pt' does not exist"),
    (["--arch", "mnist_cnn", "--checkpoint", "{junk}"], r"checkpoint '.*junk\.pt' is not a PyTorch checkpoint \(neither a torch.save zip archive nor a pickle\)$"),
    (["--arch", "mnist_cnn", "--checkpoint", "{ckpt}", "--random-init"], r"give `--checkpoint` or `--random-init`, not both"),
    (["--arch", "resnet20", "--random-init", "--importance", "obs"], r"importance 'obs' needs calibration data for arch 'resnet20': pass --data"),
    (["--arch", "mnist_mlp", "--importance", "obs", "--data", "{mnist}"], r"`--data` directory '.*mnist' holds no training data \(MNIST train-images-idx3-ubyte\[\.gz\] or CIFAR-10 data_batch_\*\); test sets are never used for calibration"),
    (["--arch", "mnist_mlp", "--importance", "obs", "--data", "nowhere"], r"`--data` must be 'mnist5k', 'random' or a directory; 'nowhere' is neither"),
    (["--arch", "mnist_mlp", "--importance", "obs", "--lam2", "0"], r"`lam2` must be a finite number > 0; got 0.0"),
    (["--arch", "mnist_mlp", "--importance", "flexrel", "--delta", "2"], r"`delta` must be in \[0, 1\]; got 2.0"),
    (["--arch", "mnist_mlp", "--importance", "obs", "--n-samples", "0"], r"`--n-samples` must be >= 1; got 0"),
    (["--arch", "resnet20", "--random-init", "--importance", "obs", "--data", "{mnist_train}"], r"per-sample gradients failed for inputs of shape \(2, 1, 28, 28\)"),
    (["--arch", "vgg"], r"argument --arch: invalid choice: 'vgg'"),
])
def test_errors_one_line_exit_2(argv, message, tmp_path, capsys):
    cnn = build_model("mnist_cnn")
    torch.save(cnn.state_dict(), tmp_path / "cnn.pt")
    torch.save(build_model("mnist_mlp").state_dict(), tmp_path / "mlp.pt")
    state = cnn.state_dict()
    state["fc2.weight"] = torch.zeros(9, 64)
    torch.save(state, tmp_path / "shape.pt")
    torch.save({**cnn.state_dict(), "head.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    (mnist / "t10k-images-idx3-ubyte.gz").write_bytes(b"")
    train = tmp_path / "train"
    train.mkdir()
    imgs = np.zeros((2, 28, 28), np.uint8)
    (train / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + np.array([2, 28, 28], ">i4").tobytes() + imgs.tobytes())
    (train / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + np.array([2], ">i4").tobytes() + bytes([1, 2]))
    subs = {"{ckpt}": str(tmp_path / "cnn.pt"), "{mlp}": str(tmp_path / "mlp.pt"), "{bad_shape}": str(tmp_path / "shape.pt"),
            "{extra}": str(tmp_path / "extra.pt"), "{junk}": str(tmp_path / "junk.pt"),
            "{tmp}": str(tmp_path), "{mnist}": str(mnist), "{mnist_train}": str(train)}
    args = []
    for a in argv:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    code = run_cli(["export", *args, "-o", str(tmp_path / "out.npz")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert __import__("re").match(r"^falcon-milp export: error: " + message, err), err
    assert not (tmp_path / "out.npz").exists()


def test_cli_arch_choices_match_registry():
    from falcon_milp.torch.architectures import ARCHITECTURES
    from falcon_milp.torch.model_options import ARCHS as _ARCHS
    assert list(_ARCHS) == list(ARCHITECTURES)
