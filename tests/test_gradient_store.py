"""Where X lives (memory at 32/16 bits, a file), the Woodbury backsolve, and the scale options
of prune_model: x_dtype, x_path, max_memory, device, grad_strategy, FALCON++ with one X."""
import os
import re

import numpy as np
import pytest
import torch

from falcon_milp.torch import OptionError
from falcon_milp.torch.backsolve import BlockPreconditioner, backsolve, dual_solve
from falcon_milp.torch.flops import prunable_layers
from falcon_milp.torch.gradient_store import GradientStore, as_store, choose_storage
from falcon_milp.torch.gradients import iter_per_sample_grads, per_sample_grads
from falcon_milp.memory import PeakMemory, available_memory
from falcon_milp.torch.prune import prune_model
from falcon_milp.torch.quadratic import QuadraticModel

from test_prune import tiny


def _matrix(n=13, p=301, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, p)).astype(np.float32))


def _stores(X, tmp_path, block_bytes=4 * 301 * 3):
    """The same X in every kind of store (small blocks, so the streaming paths are used)."""
    out = {"direct": as_store(X)}
    for dtype in ("float32", "bfloat16", "float16"):
        mem = GradientStore(X.shape[0], X.shape[1], dtype, block_bytes=block_bytes)
        f = GradientStore(X.shape[0], X.shape[1], dtype, tmp_path / f"x-{dtype}.bin", block_bytes=block_bytes)
        for s in (mem, f):
            s.write_rows(0, X[:5])
            s.write_rows(5, X[5:])
        out[f"memory {dtype}"], out[f"file {dtype}"] = mem, f
    return out


@pytest.mark.parametrize("kind", ["direct", "memory float32", "file float32", "memory bfloat16",
                                  "file bfloat16", "memory float16", "file float16"])
def test_every_store_gives_the_products_of_x_at_its_precision(kind, tmp_path):
    X = _matrix()
    store = _stores(X, tmp_path)[kind]
    Xr = X.to(store.dtype).to(torch.float64).numpy()          # X as the store holds it
    rng = np.random.default_rng(1)
    d, r = rng.standard_normal(X.shape[1]), rng.standard_normal(X.shape[0])
    np.testing.assert_allclose(store.matvec(d), Xr @ d, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(store.rmatvec(r), Xr.T @ r, rtol=1e-5, atol=1e-4)
    xd, xtxd = store.normal_products(d)
    np.testing.assert_allclose(xd, Xr @ d, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(xtxd, Xr.T @ (Xr @ d), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(store.column_sq_sums(), (Xr ** 2).sum(0), rtol=1e-5)
    assert store.frobenius2() == pytest.approx(float((Xr ** 2).sum()), rel=1e-5)
    np.testing.assert_allclose(store.column_panel(17, 140).numpy(), Xr[:, 17:140], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(store), Xr, rtol=1e-6)
    if kind != "direct":        # 16-bit storage really rounds; 32-bit is exact
        assert (np.abs(Xr - X.numpy()).max() > 0) == (store.dtype != torch.float32)
    assert store.nbytes == X.numel() * store.itemsize
    path = store.path
    store.close()
    assert path is None or not os.path.exists(path)


def test_scale_in_place_and_file_store_refuses_an_existing_file(tmp_path):
    X = _matrix(5, 40)
    for store in (GradientStore(5, 40, "bfloat16", block_bytes=200), GradientStore(5, 40, "float32", tmp_path / "a")):
        store.write_rows(0, X)
        store.scale_(0.5)
        np.testing.assert_allclose(np.asarray(store), 0.5 * X.to(store.dtype).double().numpy(), rtol=1e-2)
    existing = tmp_path / "taken.bin"
    existing.write_bytes(b"user data")
    with pytest.raises(OptionError, match=r"^`x_path` '.*taken.bin' exists; give the name of a new file$"):
        GradientStore(5, 40, "float32", existing)
    assert existing.read_bytes() == b"user data"
    with pytest.raises(OptionError, match=r"^`x_dtype` must be one of float32, float64, bfloat16, float16; got 'int8'$"):
        GradientStore(5, 40, "int8")


def test_choose_storage_from_the_memory_budget():
    n, p = 1000, 4_209_088                 # MobileNetV1 at the paper's n: 16.8 GB in float32
    assert choose_storage(n, p, 64 * 2**30) == ("float32", False)
    assert choose_storage(n, p, 24 * 2**30) == ("bfloat16", False)
    assert choose_storage(500, 25_502_912, 24 * 2**30) == ("bfloat16", True)   # ResNet50: 25.5 GB even at 16 bits
    assert choose_storage(n, p, 1, "float16") == ("float16", False)
    assert choose_storage(n, p, 2**40, None, True) == ("bfloat16", True)
    assert available_memory() > 0


def test_peak_memory_is_measured_per_call():
    pm = PeakMemory()
    pm.start()
    if pm.method != "vmhwm-reset":
        pytest.skip("no per-call peak on this platform")
    before = pm.peak_total()
    big = np.ones(64 * 2**20 // 8)          # 64 MiB touched
    assert pm.peak_total() >= before + 60 * 2**20
    del big
    pm.start()
    assert pm.peak_total() < before + 60 * 2**20


# ----------------------------------------------------------------------------- backsolve
def _qm(X, seed=0, lam2=0.05):
    rng = np.random.default_rng(seed)
    return QuadraticModel(X, rng.standard_normal(X.shape[1]), lam2)


def _dense_minimiser(X, qm, mask):
    X = np.asarray(X, dtype=np.float64)
    H = X.T @ X + 2 * qm.lam2 * np.eye(X.shape[1])
    K, P = np.flatnonzero(mask), np.flatnonzero(~mask)
    w = np.zeros(X.shape[1])
    w[K] = qm.w0[K] - np.linalg.solve(H[np.ix_(K, K)], H[np.ix_(K, P)] @ (-qm.w0[P]))
    return w


@pytest.mark.parametrize("precond", ["blocks", "dual"])
def test_backsolve_on_a_file_store_matches_the_dense_solve(precond, tmp_path):
    X = _matrix(9, 120, seed=3).double()
    store = GradientStore(9, 120, "float64", tmp_path / "x.bin", block_bytes=4 * 9 * 25)
    store.write_rows(0, X)
    qm = _qm(store)
    mask = np.random.default_rng(4).random(120) < 0.5
    res = backsolve(qm, mask, group_sizes=[50, 70], block_size=11, max_iter=100, tol=1e-12, precond=precond)
    np.testing.assert_allclose(res.w, _dense_minimiser(X, qm, mask), rtol=1e-6, atol=1e-8)
    store.close()


def test_dual_solve_is_exact_even_with_a_tiny_ridge_and_blocks_batch_their_factors():
    X = _matrix(10, 200, seed=5).double()
    mask = np.random.default_rng(6).random(200) < 0.6
    for lam2 in (1e-2, 1e-9):              # c << sigma^2: a Woodbury subtraction would cancel
        qm = _qm(X, lam2=lam2)
        exact = _dense_minimiser(X, qm, mask)
        w = dual_solve(qm, mask)
        if lam2 > 1e-3:
            np.testing.assert_allclose(w, exact, rtol=1e-8, atol=1e-10)
        # the dense reference is ill-conditioned at the tiny ridge: compare the objectives
        assert qm.value(w) <= qm.value(exact) * (1 + 1e-9) + 1e-15
        grad = qm.gradient(w)
        assert np.abs(grad[mask]).max() <= 1e-8 * np.abs(qm.gradient(np.where(mask, qm.w0, 0.0))).max()
        res = backsolve(qm, mask, precond="dual")
        assert res.objective == pytest.approx(qm.value(w), rel=1e-12) and res.n_iter == 1
    qm = _qm(X, lam2=0.01)
    # 20 blocks of 10 (primal, sizes 3..10, factored in a few padded batches) + 1 dual block of 40
    blocks = [(10 * i, 10 * i + 10) for i in range(16)] + [(160, 200)]
    mask2 = mask.copy()
    mask2[160:200] = True
    pre = BlockPreconditioner(qm, mask2, blocks)
    assert pre.forms.count("dual") == 1 and len(pre.primal) < pre.forms.count("primal")
    v = np.random.default_rng(7).standard_normal(200)
    Xd = X.numpy()
    want = np.zeros(200)
    for a, b in blocks:              # the block-diagonal inverse, block by block, densely
        idx = a + np.flatnonzero(mask2[a:b])
        if idx.size:
            H = Xd[:, idx].T @ Xd[:, idx] + 2 * qm.lam2 * np.eye(idx.size)
            want[idx] = np.linalg.solve(H, v[idx])
    np.testing.assert_allclose(pre.apply(v), want, rtol=1e-8, atol=1e-10)
    with pytest.raises(Exception, match=r"`precond` must be one of 'auto', 'blocks', 'dual'; got 'lu'"):
        backsolve(qm, mask, precond="lu")


# ----------------------------------------------------------------------------- gradients
def test_loop_and_vmap_give_the_same_gradients_and_auto_reports_its_choice():
    model, (x, y) = tiny(1, n=12)
    layers = prunable_layers(model, x[:1])
    G = {}
    for strategy in ("vmap", "loop", "auto"):
        stats = {}
        G[strategy] = torch.cat([g for _, g in iter_per_sample_grads(model, x, y, layers, chunk_size=5,
                                                                     strategy=strategy, stats=stats)])
        assert stats["strategy"] in ("vmap", "loop") and stats["examples_per_second"] > 0
        if strategy == "auto":
            assert set(stats["seconds_per_example"]) == {"vmap", "loop"}
    torch.testing.assert_close(G["loop"], G["vmap"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(G["auto"], G["vmap"], rtol=1e-5, atol=1e-6)
    # gradients at other weights than the model's, without touching the model
    before = [p.detach().clone() for p in model.parameters()]
    w = torch.cat([l.weight.detach().reshape(-1) for l in layers]) * 0.5
    Gw = torch.cat([g for _, g in iter_per_sample_grads(model, x, y, layers, weights_at=w)])
    assert not torch.allclose(Gw, G["vmap"])
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    with torch.no_grad():
        for l, s in zip(layers, np.cumsum([0] + [l.weight.numel() for l in layers])):
            l.weight.mul_(0.5)
    torch.testing.assert_close(per_sample_grads(model, x, y, layers), Gw, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- prune_model
@pytest.mark.parametrize("opts, storage", [({"x_dtype": "bfloat16"}, "memory bfloat16"),
                                           ({"x_dtype": "float16"}, "memory float16"),
                                           ({"x_path": True}, "file bfloat16"),
                                           ({"max_memory": 1}, "file bfloat16")])
def test_prune_model_with_16_bit_and_file_stores(opts, storage, tmp_path):
    model, calib = tiny(2, n=120)
    ref_model, _ = tiny(2, n=120)
    if opts.get("x_path"):
        opts = {"x_path": str(tmp_path / "x.bin")}
    rep = prune_model(model, calib, flops_fraction=0.4, n_grads=60, grad_strategy="loop", **opts)
    ref = prune_model(ref_model, calib, flops_fraction=0.4, n_grads=60, x_dtype="float32")
    assert rep.within_budgets and rep.x_storage == storage and ref.x_storage == "memory float32"
    assert rep.x_bytes == ref.x_bytes // 2 and rep.grad_strategy == "loop"
    assert rep.objective_before == pytest.approx(ref.objective_before, rel=0.02)
    assert rep.peak_memory_bytes > 0 and rep.grad_examples_per_second > 0
    assert not os.listdir(tmp_path)          # the scratch file is gone


def test_falcon_pp_holds_one_x_and_streams_the_reported_objective():
    kw = dict(flops_fraction=0.3, method="falcon++", n_grads=40, stages=2, layer_scales="none",
              lam2_rel=1e-2, update_steps=1.0, safeguard=False, val_fraction=0.0, seed=3)
    model, calib = tiny(3, n=80)
    rep = prune_model(model, calib, **kw)
    # the same Q0 computed from a stored X0 at the original weights
    fresh, _ = tiny(3, n=80)
    from falcon_milp.torch.flops import flat_weights
    from falcon_milp.torch.fisher_rows import XPlan as _XPlan, gradient_matrix as _gradients, subsample as _subsample, targets as _targets
    layers = prunable_layers(fresh, calib[0][:1])
    data = _subsample(calib, 40, 3)
    plan = _XPlan("float32", False, None, torch.device("cpu"), "vmap", None)
    X0 = _gradients(fresh, layers, data[0], _targets(fresh, data, "empirical", 3), None, 1, plan, {})
    w0 = flat_weights(layers, torch.float64).numpy()
    q0 = QuadraticModel(X0, w0, 1e-2 * X0.frobenius2() / w0.size)
    w_final = flat_weights(prunable_layers(model, calib[0][:1]), torch.float64).numpy()
    assert rep.objective_after == pytest.approx(q0.value(w_final), rel=1e-4)
    assert rep.x_bytes == X0.nbytes and len(rep.stages) == 2


def test_scale_option_errors_name_the_option_and_leave_the_model(tmp_path):
    model, calib = tiny(4, n=60)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    taken = tmp_path / "taken.bin"
    taken.write_bytes(b"keep me")
    cases = [({"x_dtype": "int8"}, r"^`x_dtype` must be one of 'float32', 'float64', 'bfloat16', 'float16'; got 'int8'$"),
             ({"x_path": str(taken)}, r"^`x_path` '.*taken.bin' exists; give the name of a new file \(it is scratch space, deleted after the run\)"),
             ({"x_path": str(tmp_path / "no" / "x.bin")}, r"^`x_path` '.*x.bin': folder '.*no' does not exist$"),
             ({"max_memory": 0}, r"^`max_memory` must be an integer >= 1; got 0$"),
             ({"device": "tpu"}, r"^`device` must be 'cpu' or 'cuda\[:k\]'; got 'tpu'$"),
             ({"grad_strategy": "jit"}, r"^`grad_strategy` must be one of 'auto', 'vmap', 'loop'; got 'jit'$"),
             ({"backsolve_precond": "lu"}, r"^`backsolve_precond` must be one of 'auto', 'blocks', 'dual'; got 'lu'$")]
    if not torch.cuda.is_available():
        cases.append(({"device": "cuda"}, r"^`device` is 'cuda' but torch sees no CUDA device here$"))
    for opts, msg in cases:
        with pytest.raises(OptionError, match=msg):
            prune_model(model, calib, flops_fraction=0.5, n_grads=20, **opts)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert taken.read_bytes() == b"keep me"


# ----------------------------------------------------------------------------- CLI
def _cli(argv, capsys):
    from falcon_milp.cli import main
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("extra, message", [
    (["--x-path", "{taken}"], r"`--x-path` '.*taken.bin' exists; give the name of a new file \(it is scratch space, deleted after the run\)"),
    (["--x-path", "/nonexistent/d/x.bin"], r"`--x-path` '/nonexistent/d/x.bin': folder '/nonexistent/d' does not exist"),
    (["--max-memory", "lots"], r"`--max-memory` must be a size such as 20G, 512M or 1000000; got 'lots'"),
    (["--max-memory", "0"], r"`--max-memory` must be at least 1 byte; got '0'"),
    (["--device", "tpu"], r"`device` must be 'cpu' or 'cuda\[:k\]'; got 'tpu'"),
])
def test_cli_scale_options_fail_in_one_line_before_any_work(extra, message, tmp_path, capsys, monkeypatch):
    import re

    import falcon_milp.torch.architectures as arch
    taken = tmp_path / "taken.bin"
    taken.write_bytes(b"keep")
    monkeypatch.setattr(arch, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work started")))
    extra = [a.replace("{taken}", str(taken)) for a in extra]
    code, out, err = _cli(["prune", "--arch", "mnist_mlp", "--flops-fraction", "0.2", "--no-progress", *extra], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert re.match(r"^falcon-milp prune: error: " + message + "$", err.strip()), err
    assert taken.read_bytes() == b"keep"


def test_cli_prune_with_a_bfloat16_x_reports_storage_and_memory(capsys):
    from falcon_milp.torch.prune_command import parse_bytes
    assert parse_bytes("20G") == 20 * 2**30 and parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("1e6") == 10**6
    code, out, err = _cli(["prune", "--arch", "mnist_mlp", "--nnz-fraction", "0.2", "--n-grads", "32",
                           "--x-dtype", "bfloat16", "--max-memory", "8G", "--no-progress"], capsys)
    assert code == 0, err
    assert re.search(r"X: memory bfloat16, 0\.00 GiB; per-sample gradients (vmap|loop), [\d.]+ examples/s on cpu", out), out
    assert re.search(r"peak memory [\d.]+ GiB \((call|process)\)", out), out
