"""Structured channel pruning: the channel MILP, the coupling graph, surgery, prune_channels."""
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from falcon_milp.channels import ChannelProblem, check_counts
from falcon_milp.exceptions import InvalidInstanceError, SolverOptionError
from falcon_milp.formulations.channels import build_channel_model, channel_spec
from falcon_milp.solvers.channels import solve_channels
from falcon_milp.torch import ModelError, OptionError
from falcon_milp.torch.architectures import build_model, example_input, load_pretrained
from falcon_milp.torch.channel_costs import channel_resources
from falcon_milp.torch.channel_graph import build_channel_graph
from falcon_milp.torch.channel_surgery import channel_gates, slice_model
from falcon_milp.torch.flops import dense_flops, prunable_layers
from falcon_milp.torch.latency import LatencyModel, fit_latency_model
from falcon_milp.torch.structured import channel_importance, prune_channels


# ----------------------------------------------------------------------------- the MILP
def _random_problem(rng, G=4, nmax=6, self_pair=False):
    sizes = rng.integers(1, nmax + 1, G)
    vals = [np.sort(rng.random(n))[::-1] for n in sizes]
    pairs = [(g, g + 1, float(rng.integers(1, 10))) for g in range(G - 1)]
    if self_pair:
        pairs.append((0, 0, 3.0))
    lin = rng.integers(0, 5, G).astype(float)
    full = sum(c * sizes[g] * sizes[h] for g, h, c in pairs) + lin @ sizes
    return ChannelProblem.from_groups(
        vals, {"flops": {"constant": 3.0, "lin": lin, "pairs": pairs}, "params": {"lin": sizes.astype(float)}},
        {"flops": 0.4 * full + 3, "params": float(sizes.sum()) * 0.8}, min_keep=1)


def _brute_force(p):
    best = None
    for c in itertools.product(*[range(int(m), int(n) + 1) for m, n in zip(p.min_keep, p.sizes)]):
        c = np.array(c)
        if check_counts(p, c).feasible and (best is None or p.value(c) > best):
            best = p.value(c)
    return best


@pytest.mark.parametrize("linearization", ["choice", "binary"])
@pytest.mark.parametrize("seed", range(12))
def test_milp_matches_brute_force(seed, linearization):
    rng = np.random.default_rng(seed)
    p = _random_problem(rng, self_pair=seed % 3 == 0)
    best = _brute_force(p)
    r = solve_channels(p, linearization=linearization)
    g = solve_channels(p, solver="greedy")
    if best is None:
        assert r.status == "infeasible" and r.counts is None
        return
    assert r.status == "optimal" and abs(r.value - best) <= 1e-9 * max(1, best)
    assert r.bound >= r.value - 1e-12 and r.gap <= 1e-9
    assert check_counts(p, r.counts).feasible
    assert g.status == "feasible" and check_counts(p, g.counts).feasible and g.value <= best + 1e-12


def test_exact_check_catches_a_rounding_violation():
    # a budget just below a product's value: exact arithmetic sees it, not a tolerance
    p = ChannelProblem.from_groups([np.ones(3), np.ones(3)], {"flops": {"pairs": [(0, 1, 1.0)]}},
                                   {"flops": 4.0 - 1e-12})
    assert not check_counts(p, np.array([2, 2])).feasible
    r = solve_channels(p)
    assert r.status == "optimal" and r.counts[0] * r.counts[1] <= 3


def test_pyomo_model_and_spec_shapes():
    p = _random_problem(np.random.default_rng(3))
    for lin in ("choice", "binary"):
        spec = channel_spec(p, lin)
        m = build_channel_model(p, lin)
        assert len(m.k) == p.n_groups and spec.notes["products"] == 3
        assert spec.n_cols == sum(b.size for b in spec.columns)


@pytest.mark.parametrize("kwargs, message", [
    ({"values": [[1.0, 2.0]]}, "`values[0]` must be non-increasing"),
    ({"values": [[-1.0]]}, "`values[0]` must be finite and >= 0"),
    ({"min_keep": 5}, "`min_keep[0]` must be an integer in [0, 2]"),
    ({"budgets": {"flops": -1.0}}, "`budgets['flops']` must be a number >= 0 or None"),
    ({"resources": {"flops": {"lin": [1.0, 2.0]}}}, "`resources['flops'].lin` must have 1 entries"),
    ({"resources": {"flops": {"pairs": [(0, 3, 1.0)]}}}, "`resources['flops'].pairs` names group 3"),
    ({"resources": {"flops": {"pairs": [(0, 0, -1.0)]}}}, "`resources['flops'].pairs` must be finite and >= 0"),
    ({"resources": {"flops": {"pairs": [(0, 0)]}}}, "`resources['flops'].pairs[0]` must be (group, group, coefficient)"),
    ({"resources": {"flops": {"pairs": [(0.5, 0, 1.0)]}}}, "with integer groups"),
    ({"min_keep": [1, 1]}, "`min_keep` must be one integer or 1 (one per group)"),
])
def test_problem_errors_name_the_field(kwargs, message):
    args = {"values": [[2.0, 1.0]], "resources": {"flops": {"pairs": [(0, 0, 1.0)]}}, "budgets": {"flops": 1.0}}
    args.update(kwargs)
    values = args["values"]
    with pytest.raises(InvalidInstanceError) as exc:
        ChannelProblem.from_groups(values, args["resources"], args["budgets"], min_keep=args.get("min_keep", 1))
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert values == args["values"]


def test_solver_option_errors():
    p = _random_problem(np.random.default_rng(0))
    with pytest.raises(SolverOptionError, match="`solver` must be one of 'highs', 'greedy'"):
        solve_channels(p, solver="cplex")
    with pytest.raises(SolverOptionError, match="`time_limit`"):
        solve_channels(p, time_limit=0)
    with pytest.raises(InvalidInstanceError, match=r"`counts\[0\]` = 0 is outside"):
        check_counts(p, np.zeros(p.n_groups, dtype=np.int64))


# ----------------------------------------------------------------------------- graph and surgery
class CatNet(nn.Module):
    """Two branches concatenated along channels, then a residual addition with a 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(9)
        self.c = nn.Conv2d(9, 9, 1)
        self.d = nn.Conv2d(9, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 8 * 8, 10)

    def forward(self, x):
        y = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = y + self.c(y)
        return self.fc(torch.flatten(F.relu(self.d(y)), 1))


class GroupedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, groups=2)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("arch, prunable, fixed_residual", [
    ("mnist_mlp", 2, False), ("mnist_cnn", 3, False), ("mnist_bn_cnn", 4, False),
    ("resnet20", 9, True), ("mobilenetv1", 14, False), ("resnet50", 37, False)])
def test_channel_graph_groups(arch, prunable, fixed_residual):
    g = build_channel_graph(build_model(arch, seed=0), example_input(arch))
    assert len(g.prunable) == prunable
    names = {grp.name: grp for grp in g.groups}
    if arch == "resnet20":   # the option-A shortcut pads channels: the residual stream stays whole
        assert all(grp.fixed for grp in g.groups if grp.roles("norm") and
                   any(m.module.endswith("bn2") for m in grp.members))
        assert fixed_residual
    if arch == "resnet50":   # one group per stage ties conv3, downsample and every block's conv3
        stage = [grp for grp in g.groups if any(m.module == "layer1.0.downsample.0" for m in grp.roles("producer"))][0]
        producers = {m.module for m in stage.roles("producer")}
        assert {"layer1.0.conv3", "layer1.1.conv3", "layer1.2.conv3", "layer1.0.downsample.0"} <= producers
    if arch == "mobilenetv1":  # the depthwise conv is tied to its input channels
        grp = names["conv1"]
        assert [m.module for m in grp.roles("depthwise")] == ["blocks.0.dw"]


def test_unsupported_pattern_names_the_module():
    with pytest.raises(ModelError, match=r"module 'conv' \(Conv2d\): grouped convolution with groups=2"):
        build_channel_graph(GroupedNet(), torch.randn(1, 4, 8, 8))


def _random_keep(graph, seed):
    rng = np.random.default_rng(seed)
    return {g: np.sort(rng.choice(graph.groups[g].size, max(1, graph.groups[g].size // 3), replace=False))
            for g in graph.prunable}


@pytest.mark.parametrize("arch", ["mnist_mlp", "mnist_cnn", "mnist_bn_cnn", "resnet20", "mobilenetv1", "catnet"])
def test_surgery_equals_masked_model_and_counts_match(arch):
    torch.manual_seed(0)
    if arch == "catnet":
        model, x = CatNet(), torch.randn(3, 3, 8, 8)
    else:
        model = build_model(arch, seed=0)
        x = torch.randn_like(example_input(arch, batch=3)) if arch != "mobilenetv1" else torch.randn(2, 3, 64, 64)
    for m in model.modules():   # non-trivial BatchNorm statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    graph = build_channel_graph(model, x)
    keep = _random_keep(graph, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = slice_model(model, graph, keep).eval()
    gates = {g: torch.zeros(graph.groups[g].size).index_fill_(0, torch.as_tensor(k), 1.0) for g, k in keep.items()}
    with torch.no_grad():
        with channel_gates(model, graph, gates):
            masked = model(x)
        cut = small(x)
    torch.testing.assert_close(cut, masked, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the input is untouched
    # the MILP's polynomial costs equal an independent count on the small model
    groups = graph.prunable
    res = channel_resources(model, graph, groups)
    p = ChannelProblem.from_groups([np.ones(graph.groups[g].size) for g in groups], res,
                                   {"flops": None, "params": None})
    chk = check_counts(p, np.array([keep[g].size for g in groups]))
    assert chk.usage["flops"] == dense_flops(prunable_layers(small, x[:1]))
    assert chk.usage["params"] == sum(q.numel() for q in small.parameters())
    assert sum(q.numel() for q in small.parameters()) < sum(q.numel() for q in model.parameters())


# ----------------------------------------------------------------------------- prune_channels
@pytest.fixture(scope="module")
def mnist_calib():
    from falcon_milp.torch.data import load_mnist_5k
    x, y = load_mnist_5k()
    return x[:512], y[:512]


@pytest.mark.parametrize("arch", ["mnist_cnn", "mnist_bn_cnn"])
def test_prune_channels_meets_the_budget(arch, mnist_calib):
    model = load_pretrained(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small, rep = prune_channels(model, example_input(arch), flops_fraction=0.3, params_fraction=0.5,
                                calib=mnist_calib, latency_batches=(8,))
    assert rep.status == "optimal" and rep.gap <= 1e-9
    assert rep.flops["counted"] == rep.flops["milp"] <= rep.flops["budget"]
    assert rep.flops["budget"] == pytest.approx(0.3 * rep.flops["dense"], rel=1e-15)
    assert rep.params["counted"] == rep.params["milp"] <= 0.5 * rep.params["dense"]
    assert rep.kept == [len(rep.kept_channels[n]) for n in rep.groups]
    assert set(rep.latency) == {"batch8"} and rep.latency["batch8"]["pruned_s"] > 0
    assert rep.batchnorm_recalibrated == (arch == "mnist_bn_cnn")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    small(example_input(arch, batch=2))
    # the greedy ranking reaches less value under the same budgets
    _, greedy = prune_channels(model, example_input(arch), flops_fraction=0.3, params_fraction=0.5,
                               calib=mnist_calib, solver="greedy", latency_batches=())
    assert greedy.value <= rep.value + 1e-12


def test_importances_are_nonnegative_and_distinguish_channels(mnist_calib):
    model = load_pretrained("mnist_bn_cnn")
    graph = build_channel_graph(model, example_input("mnist_bn_cnn"))
    for kind in ("taylor", "magnitude"):
        scores = channel_importance(model, graph, graph.prunable, kind, mnist_calib)
        assert all(s.shape == (graph.groups[g].size,) for s, g in zip(scores, graph.prunable))
        assert all(np.all(s >= 0) and np.ptp(s) > 0 for s in scores)


def test_latency_table_fit_and_budget(mnist_calib):
    model = load_pretrained("mnist_cnn")
    graph = build_channel_graph(model, example_input("mnist_cnn"))
    lm = fit_latency_model(model, graph, batch=8, example_input=example_input("mnist_cnn"))
    assert set(lm.coefficients) == {"conv1", "conv2", "fc1", "fc2"}
    assert all(c >= 0 for coef in lm.coefficients.values() for c in coef) and lm.constant >= 0
    # a known table (timings are machine noise; the budget logic is not): t = 1e-4 + 1e-5 c_in c_out
    known = LatencyModel({n: (1e-4, 0.0, 0.0, 1e-5) for n in lm.coefficients}, 2e-4, 8, {}, 0.0)
    res = known.resource(graph, graph.prunable)
    p = ChannelProblem.from_groups([np.ones(graph.groups[g].size) for g in graph.prunable],
                                   {"latency": res}, {"latency": None})
    sizes = np.array([graph.groups[g].size for g in graph.prunable])
    # channels, not flattened features: fc1 reads 32 channels (of 4 x 4 positions each)
    dense = 6e-4 + 1e-5 * sum(u.in_units.size * u.out_units.size for u in graph.uses.values())
    assert abs(p.usage(sizes)["latency"] - dense) <= 1e-12 * dense
    small, rep = prune_channels(model, example_input("mnist_cnn"), latency_fraction=0.5, calib=mnist_calib,
                                latency_model=known, latency_batches=())
    assert p.usage(np.array(rep.kept))["latency"] <= 0.5 * dense
    assert rep.latency_model["layers"] == 4 and rep.status == "optimal"


@pytest.mark.parametrize("kwargs, message", [
    ({"flops_fraction": 1.5}, "`flops_fraction` must be in [0, 1]; got 1.5"),
    ({"flops_fraction": 0.0}, "`flops_fraction` must be in (0, 1]"),
    ({}, "give at least one of `flops_fraction`"),
    ({"flops_fraction": 0.3, "importance": "l1"}, "`importance` must be one of"),
    ({"flops_fraction": 0.3, "calib": None}, "`calib` is required for importance='taylor'"),
    ({"flops_fraction": 0.3, "solver": "cplex"}, "`solver` must be one of"),
    ({"flops_fraction": 0.3, "min_keep": 0}, "`min_keep` must be an integer >= 1"),
    ({"flops_fraction": 0.3, "time_limit": -1}, "`time_limit` must be"),
    ({"flops_fraction": 0.3, "batch_size": 0}, "`batch_size` must be an integer >= 1"),
    ({"flops_fraction": 0.3, "latency_batches": 64}, "`latency_batches` must be a list of batch sizes"),
    ({"flops_fraction": 0.3, "latency_model": object()}, "`latency_model` must be a LatencyModel"),
])
def test_prune_channels_option_errors(kwargs, message, mnist_calib):
    model = load_pretrained("mnist_cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = {"calib": mnist_calib, **kwargs}
    with pytest.raises(OptionError) as exc:
        prune_channels(model, example_input("mnist_cnn"), **args)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_round_to_counts_are_multiples():
    p = _random_problem(np.random.default_rng(5), G=3, nmax=20)
    q = ChannelProblem.from_groups(list(p.values), p.resources, p.budgets, min_keep=1, round_to=4)
    for solver in ("highs", "greedy"):
        r = solve_channels(q, solver=solver)
        if r.counts is not None:
            assert all(k % 4 == 0 or k == n for k, n in zip(r.counts, q.sizes))
    with pytest.raises(InvalidInstanceError, match="is not a multiple of round_to = 4"):
        check_counts(q, np.array([3 if n > 4 else int(n) for n in q.sizes]) if any(q.sizes > 4) else np.array([3]))
    with pytest.raises(InvalidInstanceError, match="`round_to` must be an integer >= 1"):
        ChannelProblem.from_groups(list(p.values), p.resources, p.budgets, round_to=0)


def test_exact_budget_point_is_kept():
    # review finding: a point exactly on its budget was repaired away by a float margin
    p = ChannelProblem.from_groups([[3.0, 2.0, 1.0]] * 3, {"f": {"lin": [1.0, 1.0, 1.0]}}, {"f": 5.0})
    for solver in ("highs", "greedy"):
        r = solve_channels(p, solver=solver)
        assert int(r.counts.sum()) == 5
    assert solve_channels(p).status == "optimal" and solve_channels(p).value == 13.0


class TwiceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.c(F.relu(self.a(x))) + self.c(F.relu(self.b(x)))


class GammaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)
        self.gamma = nn.Parameter(torch.ones(1, 4, 1, 1))

    def forward(self, x):
        return self.b(self.a(x) * self.gamma)


class FlatBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.fc = nn.Conv2d(3, 4, 3), nn.BatchNorm1d(4 * 6 * 6), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(self.bn(torch.flatten(self.a(x), 1)))


class EllipsisNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(self.a(x)[..., :3])


@pytest.mark.parametrize("net, message", [
    (TwiceNet, "module 'c' (Conv2d) is called more than once in forward"),
    (GammaNet, "a per-channel tensor the channel graph cannot slice"),
    (FlatBNNet, "module 'bn' (BatchNorm1d): normalises a flattened tensor"),
    (EllipsisNet, "only indexing by slices and integers"),
])
def test_patterns_the_graph_refuses(net, message):
    with pytest.raises(ModelError) as exc:
        build_channel_graph(net(), torch.randn(2, 3, 8, 8))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_graph_keeps_each_module_mode():
    model = build_model("mnist_bn_cnn", seed=0).train()
    model.bn1.eval()
    build_channel_graph(model, example_input("mnist_bn_cnn"))
    assert model.training and not model.bn1.training and model.bn2.training


def test_full_budget_keeps_the_dense_model(mnist_calib):
    model = load_pretrained("mnist_cnn")
    # magnitude scores are > 0 for every channel, so the optimum keeps them all (Taylor scores of
    # dead channels are 0 and the MILP may drop those at no cost)
    small, rep = prune_channels(model, example_input("mnist_cnn"), flops_fraction=1.0, params_fraction=1.0,
                                calib=mnist_calib, importance="magnitude", latency_batches=())
    assert rep.kept == rep.sizes and rep.flops["counted"] == rep.flops["dense"]


def test_cli_prune_channels_writes_a_loadable_model(tmp_path, capsys):
    from falcon_milp.cli import main
    from falcon_milp.torch import prune_channels_command
    from falcon_milp.torch.structured import CHANNEL_IMPORTANCES, load_channel_pruned
    from falcon_milp.solvers.channels import CHANNEL_SOLVERS
    assert prune_channels_command.IMPORTANCES == CHANNEL_IMPORTANCES
    assert prune_channels_command.SOLVERS == CHANNEL_SOLVERS
    out = tmp_path / "small.pt"
    assert main(["prune-channels", "--arch", "mnist_cnn", "--flops-fraction", "0.5", "--n-calib", "256",
                 "-o", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["flops"]["counted"] <= 0.5 * rep["flops"]["dense"] and rep["status"] == "optimal"
    small = load_channel_pruned(str(out))
    assert dense_flops(prunable_layers(small, example_input("mnist_cnn"))) == rep["flops"]["counted"]


@pytest.mark.parametrize("argv, message", [
    (["--flops-fraction", "1.3"], "`--flops-fraction` must be in [0, 1]; got 1.3"),
    ([], "give `--flops-fraction`, `--params-fraction` and/or `--latency-fraction`"),
    (["--flops-fraction", "0.3", "--round-to", "0"], "`--round-to` must be an integer >= 1"),
])
def test_cli_prune_channels_errors(argv, message, capsys, tmp_path):
    from falcon_milp.cli import main
    out = tmp_path / "never.pt"
    assert main(["prune-channels", "--arch", "mnist_cnn", *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
