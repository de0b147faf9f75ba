"""prune_model on a tiny network: every method, budgets met exactly, report fields, errors, CLI."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from falcon_milp import UnknownSolverError, check_mask
from falcon_milp.torch import OptionError
from falcon_milp.torch.flops import flat_weights, prunable_layers
from falcon_milp.torch.masks import is_masked
from falcon_milp.torch import METHODS, gradual_prune, prune_model


class Tiny(nn.Module):
    """conv3x3(1->3) on 8x8 (f = 36), linear(108->5) (f = 1), linear(5->4) (f = 1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc1 = nn.Linear(3 * 6 * 6, 5)
        self.fc2 = nn.Linear(5, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(torch.relu(self.conv(x)), 1))))


def tiny(seed=0, n=48):
    torch.manual_seed(seed)
    model = Tiny().eval()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 1, 8, 8, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    return model, (x, y)


def measured(model, x):
    layers = prunable_layers(model, x[:1])
    nnz = sum(int((l.weight != 0).sum()) for l in layers)
    flops = sum(int((l.weight != 0).sum()) * l.flops_per_weight for l in layers)
    return nnz, flops, layers


@pytest.mark.parametrize("method", METHODS)
def test_every_method_meets_the_budgets(method):
    model, calib = tiny()
    before = flat_weights(prunable_layers(model, calib[0][:1]))
    rep = prune_model(model, calib, flops_fraction=0.3, nnz_fraction=0.6, method=method, solver="fast",
                      n_grads=32, stages=3, max_iter=20)
    nnz, flops, layers = measured(model, calib[0])
    assert (rep.kept_nnz, rep.kept_flops) == (nnz, flops)
    assert rep.dense_nnz == 27 + 540 + 20 and rep.dense_flops == 27 * 36 + 540 + 20
    assert rep.kept_nnz_fraction == pytest.approx(nnz / rep.dense_nnz)
    if method == "nnz-only":       # the FLOP budget is reported, not enforced
        assert rep.max_flops is None and nnz <= rep.max_nnz == math.floor(0.6 * 587)
    else:
        assert nnz <= rep.max_nnz and flops <= rep.max_flops == pytest.approx(0.3 * rep.dense_flops)
    assert rep.within_budgets
    # 48 examples: 24 set aside for the referee (min(256, N // 2)), 24 left for the gradients
    assert rep.method == method and rep.n_grads == 24 and rep.n_val == 24
    assert rep.objective_before is not None and rep.objective_after is not None
    assert rep.times["total"] > 0 and set(rep.times) >= {"gradients", "projections", "backsolve"}
    after = flat_weights(layers)
    if method in ("magnitude", "layerwise-magnitude", "ratio-greedy"):
        kept = after != 0
        assert torch.equal(after[kept], before[kept])          # no weight update
    if method in ("falcon", "obs", "nnz-only"):
        assert rep.objective_after <= rep.objective_before * (1 + 1e-6) + 1e-12
    if method == "falcon++":
        assert [s["stage"] for s in rep.stages] == [1, 2, 3]
        assert rep.stages[-1]["flops_fraction"] == 0.3
    d = rep.to_dict()
    assert json.loads(json.dumps(d, default=str))["method"] == method


def test_falcon_masks_are_feasible_under_the_exact_check_for_each_solver():
    from falcon_milp import PruningInstance, solver_names
    for solver in [s for s in ("fast", "exact", "ratio-greedy") if s in solver_names()]:
        model, calib = tiny(3)
        rep = prune_model(model, calib, flops_fraction=0.2, method="falcon", solver=solver, n_grads=24)
        layers = prunable_layers(model, calib[0][:1])
        mask = (flat_weights(layers) != 0).numpy()
        inst = PruningInstance.from_flat(np.ones(mask.size), [l.n_weights for l in layers],
                                         [l.flops_per_weight for l in layers], max_nnz=rep.max_nnz,
                                         max_flops=rep.max_flops)
        assert check_mask(inst, mask).feasible, solver


def test_fisher_diagonal_metric_option():
    model, calib = tiny(7)
    rep = prune_model(model, calib, flops_fraction=0.25, method="falcon", metric="fisher-diagonal", n_grads=24)
    assert rep.within_budgets and rep.objective_after <= rep.objective_before * (1 + 1e-6) + 1e-12
    with pytest.raises(OptionError, match=r"`metric` must be one of 'euclidean', 'fisher-diagonal'; got 'l1'"):
        prune_model(model, calib, metric="l1")


def test_layerwise_magnitude_keeps_the_same_fraction_everywhere():
    model, calib = tiny(1)
    rep = prune_model(model, calib, flops_fraction=0.25, method="layerwise-magnitude", compute_objective=False)
    for name, (kept, n, _f) in rep.per_layer.items():
        assert kept == math.floor(0.25 * n), name
    assert rep.objective_before is None and rep.times["gradients"] == 0


def test_nnz_only_ignores_flops_and_falcon_respects_them():
    model, calib = tiny(2)
    nnz_only = prune_model(model, calib, flops_fraction=0.1, method="nnz-only", n_grads=24)
    assert nnz_only.max_nnz == math.floor(0.1 * 587)
    model2, _ = tiny(2)
    falcon = prune_model(model2, calib, flops_fraction=0.1, method="falcon", n_grads=24)
    assert falcon.kept_flops <= 0.1 * falcon.dense_flops


def test_keep_masks_and_masked_models():
    model, calib = tiny(4)
    prune_model(model, calib, flops_fraction=0.5, method="magnitude", keep_masks=True, compute_objective=False)
    assert is_masked(model.conv) and is_masked(model.fc1)
    rep = prune_model(model, calib, flops_fraction=0.2, method="falcon", n_grads=24)
    nnz, flops, _ = measured(model, calib[0])
    assert flops <= 0.2 * rep.dense_flops and (rep.kept_nnz, rep.kept_flops) == (nnz, flops)


def test_gradual_pruning_holds_the_mask_while_training():
    model, calib = tiny(5, n=64)
    seen = []

    def train_epoch(m, epoch):
        zero = (flat_weights(prunable_layers(m, calib[0][:1])) == 0)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
        for _ in range(3):
            loss = nn.functional.cross_entropy(m(calib[0]), calib[1])
            opt.zero_grad()
            loss.backward()
            opt.step()
        after = flat_weights(prunable_layers(m, calib[0][:1]))
        seen.append(bool(torch.all(after[zero] == 0)))
        return loss.item()

    rep = gradual_prune(model, calib, calib, flops_fraction=0.2, method="falcon", n_epochs=4,
                        prune_epochs=[0, 2], train_epoch=train_epoch, n_grads=32)
    assert rep.prune_epochs == [0, 2] and sorted(rep.reports) == [0, 2] and len(rep.train_loss) == 4
    assert rep.reports[0].flops_fraction == pytest.approx(0.7) and rep.reports[2].flops_fraction == 0.2
    assert all(seen)
    assert not is_masked(model.conv)          # folded at the end
    nnz, flops, _ = measured(model, calib[0])
    assert flops <= 0.2 * rep.reports[2].dense_flops


def test_default_sgd_fine_tuning_runs():
    model, calib = tiny(6, n=40)
    rep = gradual_prune(model, calib, calib, flops_fraction=0.4, method="magnitude", n_epochs=2,
                        n_prunes=2, batch_size=16, compute_objective=False)
    assert len(rep.train_loss) == 2 and all(np.isfinite(rep.train_loss))
    _, flops, _ = measured(model, calib[0])
    assert flops <= 0.4 * rep.reports[1].dense_flops


def test_prune_errors():
    model, calib = tiny()
    with pytest.raises(OptionError, match=r"`flops_fraction` must be in \[0, 1\]; got 1.5"):
        prune_model(model, calib, flops_fraction=1.5)
    with pytest.raises(OptionError, match=r"`nnz_fraction` must be in \[0, 1\]; got -0.1"):
        prune_model(model, calib, nnz_fraction=-0.1)
    with pytest.raises(OptionError, match=r"`method` must be one of 'falcon', 'falcon\+\+', .*; got 'sgd'"):
        prune_model(model, calib, method="sgd")
    with pytest.raises(OptionError, match=r"give `flops_fraction` or `nnz_fraction` \(both are None\)"):
        prune_model(model, calib, flops_fraction=None)
    with pytest.raises(UnknownSolverError, match=r"`solver` must be one of .*; got 'nope'"):
        prune_model(model, calib, solver="nope")
    with pytest.raises(OptionError, match=r"`calib` must be a pair of tensors \(inputs, targets\)"):
        prune_model(model, calib[0])
    with pytest.raises(OptionError, match=r"`calib` inputs and targets must hold the same number"):
        prune_model(model, (calib[0], calib[1][:3]))
    with pytest.raises(OptionError, match=r"`n_grads` must be an integer >= 1; got 0"):
        prune_model(model, calib, n_grads=0)
    with pytest.raises(OptionError, match=r"`stages` must be an integer >= 1; got 0"):
        prune_model(model, calib, method="falcon++", stages=0)
    with pytest.raises(OptionError, match=r"`lam2` must be a finite number >= 0; got -1"):
        prune_model(model, calib, lam2=-1)
    with pytest.raises(OptionError, match=r"`model` must be a torch.nn.Module; got str"):
        prune_model("model", calib)
    with pytest.raises(OptionError, match=r"`prune_epochs` must be distinct epochs in \[0, 1\]; got \[0, 5\]"):
        gradual_prune(model, calib, calib, n_epochs=2, prune_epochs=[0, 5])
    # nothing was pruned by the failed calls
    assert all(bool((l.weight != 0).all()) for l in prunable_layers(model, calib[0][:1]))


# ----------------------------------------------------------------------------- CLI
def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "falcon_milp", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_import_does_not_load_torch():
    code = "import sys, falcon_milp.torch.prune_command; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cli_prune_mlp_json(tmp_path):
    out = tmp_path / "mlp.pt"
    res = run_cli("prune", "--arch", "mnist_mlp", "--nnz-fraction", "0.1", "--method", "falcon",
                  "--n-grads", "64", "--no-progress", "--json", "-o", str(out))
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["kept_nnz"] <= math.floor(0.1 * 32360) and rep["within_budgets"]
    state = torch.load(out, weights_only=True)
    assert sum(int((v != 0).sum()) for k, v in state.items() if k.endswith("weight")) == rep["kept_nnz"]


def test_cli_prune_errors_are_one_line():
    res = run_cli("prune", "--arch", "mnist_mlp", "--flops-fraction", "1.5", "--no-progress")
    assert res.returncode == 2
    assert res.stderr.strip() == "falcon-milp prune: error: `flops_fraction` must be in [0, 1]; got 1.5"
    res = run_cli("prune", "--arch", "resnet20", "--flops-fraction", "0.5", "--no-progress")
    assert res.returncode == 2 and "`--checkpoint` is required for arch 'resnet20'" in res.stderr


# ----------------------------------------------------------------------------- referee, BN, safeguard
class TinyBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.bn(self.conv(x))), 1))


def test_public_imports():
    import falcon_milp.torch as ft
    for name in ("prune_model", "gradual_prune", "PruneReport", "recalibrate_batchnorm", "Referee",
                 "split_calibration", "refine_support", "QuadraticModel", "Projector"):
        assert callable(getattr(ft, name)) or isinstance(getattr(ft, name), type)


def test_falcon_report_holds_the_referee_grid_and_choice():
    model, calib = tiny(2, n=80)
    rep = prune_model(model, calib, flops_fraction=0.3, method="falcon", n_grads=40,
                      lam2_rel=[1e-3, 1e-1], update_steps=[0.5, 1.0])
    labels = [c["candidate"] for c in rep.referee]
    for r in ("lam2_rel=0.001", "lam2_rel=0.1"):
        assert f"{r}, t=0.5" in labels and f"{r}, t=1" in labels
    assert "layer scales, t=0" in labels and labels[-2:] == ["magnitude", "result"]
    scores = {c["candidate"]: c["score"] for c in rep.referee}
    # the answer is the best-scored candidate of the stage (or magnitude, and then it says so)
    stage_best = min((c for c in rep.referee[:-2]), key=lambda c: c["score"])
    if rep.fallback is None:
        assert rep.choice == stage_best["candidate"]
        assert scores["result"] == pytest.approx(stage_best["score"])
        assert scores["result"] <= scores["magnitude"]
    else:
        assert rep.fallback == "magnitude" and scores["magnitude"] < scores["result"]
    assert rep.n_val == 40 and rep.n_grads == 40
    assert rep.val_loss_after is not None and rep.val_loss_magnitude is not None
    assert rep.bn_recalibrated == 0 and len(rep.log2_layer_scales) == 3


def test_safeguard_returns_magnitude_when_falcon_validates_worse(monkeypatch):
    """A stage that returns garbage (all kept weights multiplied by -50) must be caught."""
    import falcon_milp.torch.prune_methods as methods_mod
    real = methods_mod.run_stage

    def broken(X, w_cur, projector, sizes, cfg, referee, times, **kw):
        res = real(X, w_cur, projector, sizes, cfg, None, times, **kw)
        res.w = -50.0 * res.w
        return res

    monkeypatch.setattr(methods_mod, "run_stage", broken)
    model, calib = tiny(3, n=80)
    w0 = flat_weights(prunable_layers(model, calib[0][:1])).clone()
    rep = prune_model(model, calib, flops_fraction=0.3, method="falcon", n_grads=40)
    assert rep.fallback == "magnitude"
    after = flat_weights(prunable_layers(model, calib[0][:1]))
    kept = after != 0
    assert torch.equal(after[kept], w0[kept])                 # the magnitude solution: no update
    model2, _ = tiny(3, n=80)
    rep2 = prune_model(model2, calib, flops_fraction=0.3, method="falcon", n_grads=40, safeguard=False)
    assert rep2.fallback is None


@pytest.mark.parametrize("method", ["magnitude", "falcon", "falcon++"])
def test_batchnorm_is_reestimated_after_pruning(method):
    torch.manual_seed(0)
    model = TinyBN().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(80, 1, 8, 8, generator=gen)
    y = torch.randint(0, 4, (80,), generator=gen)
    rep = prune_model(model, (x, y), flops_fraction=0.3, method=method, n_grads=40, stages=2)
    assert rep.bn_recalibrated == 1 and rep.within_budgets
    # the running mean is the mean of the pruned conv's outputs on the gradient part's inputs
    with torch.no_grad():
        z = model.conv(x)
    assert model.bn.running_mean.abs().max() <= z.mean(dim=(0, 2, 3)).abs().max() * 3 + 1e-3
    model2 = TinyBN().eval()
    before = model2.bn.running_mean.clone()
    rep2 = prune_model(model2, (x, y), flops_fraction=0.3, method="magnitude", bn_recalibrate=False)
    assert rep2.bn_recalibrated == 0 and torch.equal(model2.bn.running_mean, before)


def test_falcon_plus_plus_reports_stages_with_times_and_paper_schedule():
    model, calib = tiny(4, n=80)
    rep = prune_model(model, calib, flops_fraction=0.3, method="falcon++", n_grads=40, stages=3)
    assert [s["stage"] for s in rep.stages] == [1, 2, 3]
    assert all(s["seconds"] > 0 and s["choice"] for s in rep.stages)
    from falcon_milp.torch.schedules import stage_budgets
    assert len(stage_budgets(0.3, None, 20)) == 20
    model2, _ = tiny(4, n=80)
    rep2 = prune_model(model2, calib, flops_fraction=0.3, method="falcon++", n_grads=40,
                       schedule="paper", layer_scales="none", lam2_rel=1e-2, update_steps=1.0)
    assert len(rep2.stages) == 20 and rep2.stages[-1]["flops_fraction"] == 0.3


def test_sampled_fisher_and_summed_rows():
    from falcon_milp.torch.fisher_rows import XPlan as _XPlan, gradient_matrix as _gradients, targets as _targets
    model, (x, y) = tiny(5, n=40)
    layers = prunable_layers(model, x[:1])
    plan = _XPlan("float32", False, None, torch.device("cpu"), "auto", None)
    X1 = np.asarray(_gradients(model, layers, x, _targets(model, (x, y), "empirical", 0), None, 1, plan, {}))
    ys = _targets(model, (x, y), "sampled", 0)
    assert torch.equal(ys, _targets(model, (x, y), "sampled", 0)) and not torch.equal(ys, y)
    X4 = np.asarray(_gradients(model, layers, x, ys, None, 4, plan, {}))
    assert X1.shape == (40, 587) and X4.shape == (10, 587)
    # same scale: both estimate a Fisher whose trace is of the same order
    assert 0.05 < float((X4 ** 2).sum()) / float((X1 ** 2).sum()) < 20


def test_new_option_errors():
    model, calib = tiny()
    with pytest.raises(OptionError, match=r"`lam2_rel` must be a number or a non-empty list of numbers; got \[\]"):
        prune_model(model, calib, lam2_rel=[])
    with pytest.raises(OptionError, match=r"`update_steps` entries must be numbers in \[0, 1\]; got 2"):
        prune_model(model, calib, update_steps=[0.5, 2])
    with pytest.raises(OptionError, match=r"`fisher` must be one of 'empirical', 'sampled'; got 'exact'"):
        prune_model(model, calib, fisher="exact")
    with pytest.raises(OptionError, match=r"`fisher='sampled'` draws class labels: it needs the default cross-entropy loss"):
        prune_model(model, calib, fisher="sampled", loss_fn=lambda o, t: o.sum())
    with pytest.raises(OptionError, match=r"`schedule` must be one of None, 'polynomial', 'paper'; got 'fast'"):
        prune_model(model, calib, schedule="fast")
    with pytest.raises(OptionError, match=r"`val_fraction` must be in \[0, 1\]; got 1.5"):
        prune_model(model, calib, val_fraction=1.5)
    with pytest.raises(OptionError, match=r"`grads_per_row` must be an integer >= 1; got 0"):
        prune_model(model, calib, grads_per_row=0)
    with pytest.raises(OptionError, match=r"`criterion` must be one of 'calibrated-loss', 'loss', 'accuracy'; got 'f1'"):
        prune_model(model, calib, criterion="f1")


def test_model_is_restored_when_pruning_fails_midway(monkeypatch):
    import falcon_milp.torch.prune_methods as methods_mod

    model, calib = tiny(6, n=80)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = methods_mod.run_stage

    def half(X, w_cur, projector, sizes, cfg, referee, times, **kw):
        real(X, w_cur, projector, sizes, cfg, referee, times, **kw)    # writes candidates
        raise RuntimeError("solver crashed")

    monkeypatch.setattr(methods_mod, "run_stage", half)
    with pytest.raises(RuntimeError, match="solver crashed"):
        prune_model(model, calib, flops_fraction=0.3, method="falcon", n_grads=40)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_masks_registered_by_a_failing_call_are_removed(monkeypatch):
    import falcon_milp.torch.prune as prune_mod

    def boom(layers):
        raise RuntimeError("count failed")

    monkeypatch.setattr(prune_mod, "layer_usage", boom)
    model, calib = tiny(7, n=80)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="count failed"):
        prune_model(model, calib, flops_fraction=0.3, method="magnitude", keep_masks=True)
    assert not any(is_masked(m) for m in (model.conv, model.fc1, model.fc2))
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
