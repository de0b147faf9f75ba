"""Issue 10, items 3 and 5: bad inputs get one line naming the field (exit 2, no traceback),
checked before any work; budgets above the dense totals; the caller's arrays are never shared;
register_solver and a real availability check; mask files."""
import itertools
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from falcon_milp import (InvalidInstanceError, InstanceFileError, OutputPathError, PruningInstance,
                         SolverOptionError, load_instance, save_instance, solve, solver_names)
from falcon_milp.cli import main
from falcon_milp.exceptions import (SolverRegistrationError, SolverUnavailableError,
                                    UnknownSolverError)
from falcon_milp.instance import budgets_from_fractions, nnz_from_fraction
from falcon_milp.io import check_writable, check_writable_dir, json_safe
from falcon_milp.solvers import REGISTRY, RawSolution, get_solver, register_solver

TINY_FILE = str(Path(__file__).parent.parent / "instances" / "tiny" / "both-binding.npz")
HAS_PROC = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def cli(argv, capsys):
    """(exit code, stdout, stderr) of the real entry point; SystemExit counts as its code."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(err, command, *fragments):
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith(f"falcon-milp {command}: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)


def _no_work(*_a, **_k):
    raise AssertionError("work started before the output path was checked")


# ------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("argv, field, why, block", [
    (["solve", TINY_FILE, "--mask-out", "/nonexistent/d/m.npy"], "--mask-out",
     "directory '/nonexistent/d' does not exist", "falcon_milp.io.load_instance"),
    (["export", "--arch", "mnist_mlp", "-o", "/nonexistent/d/x.npz"], "--output",
     "directory '/nonexistent/d' does not exist", "falcon_milp.torch.architectures.build_model"),
    (["prune", "--arch", "mnist_mlp", "--flops-fraction", "0.2", "-o", "/nonexistent/d/p.pt"],
     "--output", "directory '/nonexistent/d' does not exist", "falcon_milp.torch.architectures.build_model"),
    (["prune", "--arch", "mnist_mlp", "--flops-fraction", "0.2", "--mask-out", "/nonexistent/d/m.npz"],
     "--mask-out", "directory '/nonexistent/d' does not exist", "falcon_milp.torch.architectures.build_model"),
    (["export-model", TINY_FILE, "-o", "/nonexistent/d/m.lp"], "--output",
     "directory '/nonexistent/d' does not exist", "falcon_milp.io.load_instance"),
])
def test_output_path_checked_before_any_work(argv, field, why, block, capsys, monkeypatch):
    module, _, name = block.rpartition(".")
    monkeypatch.setattr(sys.modules[module] if module in sys.modules else __import__(module, fromlist=[name]),
                        name, _no_work)
    code, out, err = cli(argv, capsys)
    assert code == 2 and out == ""
    assert_one_line(err, argv[0], f"`{field}`", why)


@pytest.mark.skipif(not HAS_PROC, reason="needs Linux /proc")
@pytest.mark.parametrize("argv, field", [
    (["bench", "--out", "/proc/x"], "--out"),
    (["export-model", TINY_FILE, "-o", "/proc/m.lp"], "--output"),
    (["solve", TINY_FILE, "--mask-out", "/proc/m.npy"], "--mask-out"),
])
def test_unwritable_directory(argv, field, capsys, monkeypatch):
    import falcon_milp.bench.bench_command as bench_command
    import falcon_milp.io as io
    monkeypatch.setattr(bench_command, "resolve_suite", _no_work)
    monkeypatch.setattr(io, "load_instance", _no_work)
    code, _, err = cli(argv, capsys)
    assert code == 2
    assert_one_line(err, argv[0], f"`{field}`", "directory '/proc' ")


def test_output_path_that_is_a_directory_or_under_a_file(tmp_path, capsys):
    code, _, err = cli(["export-model", TINY_FILE, "-o", str(tmp_path)], capsys)
    assert code == 2
    assert_one_line(err, "export-model", f"`--output` '{tmp_path}' is a directory; give a file name")
    afile = tmp_path / "f"
    afile.write_text("x")
    code, _, err = cli(["solve", TINY_FILE, "--mask-out", str(afile / "m.npy")], capsys)
    assert code == 2
    assert_one_line(err, "solve", "`--mask-out`", f"'{afile}' is not a directory")
    code, _, err = cli(["bench", "--out", str(afile / "sub")], capsys)
    assert code == 2
    assert_one_line(err, "bench", "`--out`", "is not a directory")


def test_output_path_via_subprocess_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "falcon_milp", "solve", TINY_FILE, "--mask-out",
                           "/nonexistent/d/m.npy"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("falcon-milp solve: error: `--mask-out` '/nonexistent/d/m.npy': directory "
                           "'/nonexistent/d' does not exist\n")


def test_check_writable_creates_and_truncates_nothing(tmp_path):
    existing = tmp_path / "keep.npy"
    existing.write_bytes(b"precious")
    before = existing.stat()
    assert check_writable(existing, "--mask-out") == existing
    assert existing.read_bytes() == b"precious" and existing.stat().st_mtime_ns == before.st_mtime_ns
    assert check_writable(tmp_path / "new.npy", "--mask-out") == tmp_path / "new.npy"
    assert check_writable_dir(tmp_path / "a" / "b", "--out") == tmp_path / "a" / "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npy"]
    with pytest.raises(OutputPathError, match=r"^`f` '.*' is a directory; give a file name$"):
        check_writable(tmp_path, "f")


def test_mask_out_still_written(tmp_path, capsys):
    code, _, _ = cli(["solve", TINY_FILE, "--mask-out", str(tmp_path / "m")], capsys)
    assert code == 0 and np.load(tmp_path / "m.npy").dtype == bool


# ------------------------------------------------------------------------- huge budgets
def _brute_force(inst):
    """Optimum over per-group kept counts (each group keeps its most important weights)."""
    groups = [np.sort(g)[::-1] for g in inst.importances]
    best = -1.0
    for counts in itertools.product(*(range(g.size + 1) for g in groups)):
        if sum(counts) > inst.max_nnz:
            continue
        if sum(c * f for c, f in zip(counts, inst.flops_per_weight)) > inst.max_flops:
            continue
        best = max(best, sum(float(g[:c].sum()) for g, c in zip(groups, counts)))
    return best


def _groups():
    rng = np.random.default_rng(3)
    return [rng.random(4), rng.random(3), rng.random(5)]


@pytest.mark.parametrize("max_nnz", [1e30, 2**63, 10**40, np.uint64(2**63)])
@pytest.mark.parametrize("max_flops", [None, 9.0, 1e30])
def test_huge_nnz_budget_is_clamped_and_solved(max_nnz, max_flops):
    inst = PruningInstance.from_groups(_groups(), [2.0, 1.0, 0.5], max_nnz=max_nnz, max_flops=max_flops)
    assert inst.max_nnz == 12 and isinstance(inst.budgets[0], int)
    assert inst.max_flops == (13.5 if max_flops in (None, 1e30) else 9.0)   # 1e30 > dense: clamped
    optimum = _brute_force(inst)
    for solver in ("fast", "exact"):
        res = solve(inst, solver)
        assert res.status == "optimal", solver
        assert res.objective == pytest.approx(optimum, rel=1e-12), solver


def test_huge_budgets_in_a_file_and_through_the_constructor(tmp_path, capsys):
    inst = PruningInstance.from_groups(_groups(), [2.0, 1.0, 0.5], max_nnz=5, max_flops=7.0)
    path = save_instance(inst, tmp_path / "x.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["header"].tobytes().decode())
    for big in (2**63, 1e30):
        header["budgets"] = [big, 1e300]
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
        with open(tmp_path / "big.npz", "wb") as fh:
            np.savez(fh, **arrays)
        back = load_instance(tmp_path / "big.npz")
        assert back.budgets == (12, 13.5)
        for solver in ("fast", "exact"):
            code, out, err = cli(["solve", str(tmp_path / "big.npz"), "--solver", solver, "--json"], capsys)
            assert code == 0 and err == "" and json.loads(out)["status"] == "optimal"
    direct = PruningInstance(inst.importance, inst.group_sizes, inst.names, inst.costs, (2**63, math.inf))
    assert direct.max_nnz == 12 and math.isinf(direct.max_flops)     # inf = no budget, kept
    assert solve(direct, "exact").objective == pytest.approx(float(inst.importance.sum()))


def test_none_budget_beyond_the_float_range_is_infinite():
    inst = PruningInstance.from_groups([np.ones(4)], [1e308])
    assert math.isinf(inst.max_flops)


# ------------------------------------------------------------------------- unknown solver options
def test_unknown_solver_option_names_it_and_lists_the_accepted():
    inst = PruningInstance.from_groups(_groups(), [2.0, 1.0, 0.5], max_nnz=5, max_flops=7.0)
    with pytest.raises(SolverOptionError, match=r"^unknown option `foo` for solver 'fast'; it accepts: "
                       r"`time_limit`, `rel_gap`, `threads`, `search_nodes`$"):
        solve(inst, solver="fast", foo=1)
    with pytest.raises(SolverOptionError, match=r"^unknown option `nodes` for solver 'exact'; it accepts: .*"
                       r"`max_nodes`, `band`$"):
        solve(inst, solver="exact", nodes=5)
    with pytest.raises(SolverOptionError, match=r"^unknown option `foo` for solver 'ratio-greedy'"):
        solve(inst, solver="ratio-greedy", foo=1)
    assert solve(inst, solver="fast", search_nodes=0).status in ("optimal", "feasible")


# ------------------------------------------------------------------------- misleading messages
def test_random_bytes_as_npz(tmp_path, capsys):
    path = tmp_path / "r.npz"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8)).replace(b"PK", b"pk")
                     .replace(b"\x93", b"\x00"))
    code, _, err = cli(["info", str(path)], capsys)
    assert code == 2
    assert_one_line(err, "info", f"instance file '{path}' is not an .npz archive (no zip signature)")
    assert "pickle" not in err


def test_npy_and_pickled_arrays_as_npz(tmp_path):
    np.save(tmp_path / "a.npy", np.ones(3))
    with pytest.raises(InstanceFileError, match=r"is a single \.npy array, not an \.npz archive$"):
        load_instance(tmp_path / "a.npy")
    inst = PruningInstance.from_groups([np.ones(2)], [1.0])
    path = save_instance(inst, tmp_path / "o.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["importance"] = np.array([1.0, "x"], dtype=object)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(InstanceFileError, match=r"an array holds Python objects \(pickled data\); "
                       r"instance arrays are plain numbers$") as info:
        load_instance(path)
    assert "allow_pickle" not in str(info.value)


@pytest.fixture
def checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    from falcon_milp.torch.architectures import build_model
    model = build_model("mnist_mlp", seed=0)
    files = {}
    files["garbage"] = tmp_path / "garbage.pt"
    files["garbage"].write_bytes(b"not a checkpoint " + bytes(range(256)) * 4)
    files["whole"] = tmp_path / "whole.pt"
    torch.save(model, files["whole"])
    state = model.state_dict()
    torch.save(state, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    files["truncated"] = tmp_path / "truncated.pt"
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"] = tmp_path / "empty.pt"
    files["empty"].write_bytes(b"")
    state["fc2.weight"][3, 1] = float("nan")
    files["nan"] = tmp_path / "nan.pt"
    torch.save(state, files["nan"])
    return files


@pytest.mark.parametrize("kind, message", [
    ("garbage", "is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"),
    ("whole", "is not a state_dict of tensors (it holds other pickled Python objects, e.g. a whole model); "
              "save model.state_dict() and load that"),
    ("truncated", "is a truncated or corrupt torch.save archive"),
    ("empty", "is empty"),
    ("nan", ": parameter 'fc2.weight' has NaN (first non-finite entry at index (3, 1))"),
])
def test_checkpoint_messages(kind, message, checkpoints, tmp_path, capsys):
    path = checkpoints[kind]
    for command in (["export", "-o", str(tmp_path / "x.npz")],
                    ["prune", "--flops-fraction", "0.2", "--no-progress"]):
        code, out, err = cli([command[0], "--arch", "mnist_mlp", "--checkpoint", str(path), *command[1:]], capsys)
        assert code == 2
        assert_one_line(err, command[0], f"checkpoint '{path}'{'' if message[0] == ':' else ' '}{message}")
        assert "weights_only" not in err and "importances" not in err
    assert not (tmp_path / "x.npz").exists()


def test_export_instance_names_a_nan_parameter():
    torch = pytest.importorskip("torch")
    from falcon_milp.torch import ModelError
    from falcon_milp.torch.architectures import build_model, example_input
    from falcon_milp.torch.export import export_instance
    model = build_model("mnist_mlp", seed=0)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match=r"^model parameter 'fc1.weight' has NaN or infinite values$"):
        export_instance(model, example_input("mnist_mlp"))


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_info_and_solve_json_are_strict_json(tmp_path, capsys):
    inst = PruningInstance.from_groups([np.ones(3), np.ones(2)], [1.0, 2.0], max_nnz=2, max_flops=math.inf)
    path = str(save_instance(inst, tmp_path / "inf.npz"))
    code, out, _ = cli(["info", path, "--json"], capsys)
    assert code == 0
    summary = _strict_json(out)
    assert summary["resources"]["flops"]["budget"] is None          # infinite budget -> null
    assert summary["resources"]["flops"]["dense_total"] == 7.0
    code, out, _ = cli(["solve", path, "--json"], capsys)
    assert code == 0 and _strict_json(out)["status"] == "optimal"


def test_json_safe():
    value = {"a": math.inf, "b": [np.float32("nan"), 1.5, (2, -math.inf)], "c": "x", "d": True}
    assert json_safe(value) == {"a": None, "b": [None, 1.5, [2, None]], "c": "x", "d": True}


# ------------------------------------------------------------------------- item 5: API edges
def test_constructor_copies_and_validates():
    imp = np.array([3.0, 1.0, 2.0, 0.5])
    sizes = np.array([3, 1])
    costs = np.array([[1.0, 2.0], [1.0, 5.0]])
    inst = PruningInstance(imp, sizes, ("a", "b"), costs, (2, 7.0))
    imp[0] = -1.0
    sizes[0] = 99
    costs[0, 1] = -3.0
    assert inst.importance[0] == 3.0 and inst.group_sizes[0] == 3 and inst.costs[0, 1] == 2.0
    for arr in (inst.importance, inst.group_sizes, inst.costs):
        assert not arr.flags.writeable
    assert imp.flags.writeable and sizes.flags.writeable and costs.flags.writeable  # caller's flags
    with pytest.raises(InvalidInstanceError, match=r"^`importances` of group 'a' must be finite and >= 0; "
                                                   r"got -1.0 at index 0$"):
        PruningInstance(imp, np.array([3, 1]), ("a", "b"), np.array([[1.0, 2.0], [1.0, 5.0]]), (2, 7.0))
    with pytest.raises(InvalidInstanceError, match=r"^`costs` column 0 \(nnz\) must be all ones$"):
        PruningInstance(np.ones(4), np.array([3, 1]), ("a", "b"), np.array([[2.0, 2.0], [1.0, 5.0]]), (2, 7.0))
    with pytest.raises(InvalidInstanceError, match=r"^`costs` must have shape \(groups, 2 resources\)"):
        PruningInstance(np.ones(4), np.array([3, 1]), ("a", "b"), np.ones((2, 3)), (2, 7.0))


def test_from_flat_without_copy_leaves_the_callers_flags():
    imp = np.arange(5.0)
    inst = PruningInstance.from_flat(imp, [3, 2], [1.0, 2.0], max_nnz=2, copy=False)
    assert imp.flags.writeable                      # the caller's array is left alone
    assert not inst.importance.flags.writeable      # the instance's view is read-only
    assert np.shares_memory(inst.importance, imp)
    copied = PruningInstance.from_flat(imp, [3, 2], [1.0, 2.0], max_nnz=2)
    assert not np.shares_memory(copied.importance, imp)


def test_with_budgets_none_means_no_budget():
    inst = PruningInstance.from_groups([np.ones(3), np.ones(2)], [1.0, 2.0], max_nnz=2, max_flops=3.0,
                                       extra_resources={"bytes": ([4.0, 1.0], 5.0)})
    assert inst.with_budgets(max_flops=None).budgets == (2, 7.0, 5.0)
    assert inst.with_budgets(max_nnz=None).budgets == (5, 3.0, 5.0)
    assert inst.with_budgets(bytes=None).budgets == (2, 3.0, 14.0)
    assert inst.with_budgets(max_flops=1e30, max_nnz=2**63).budgets == (5, 7.0, 5.0)   # clamped
    assert inst.with_budgets().budgets == inst.budgets                                # unnamed: kept
    with pytest.raises(InvalidInstanceError, match=r"^unknown budget `flops`; known: max_nnz, max_flops, bytes$"):
        inst.with_budgets(flops=1.0)


def test_nnz_from_fraction_is_exact():
    assert nnz_from_fraction(0.29, 100) == 29 and math.floor(0.29 * 100) == 28
    assert nnz_from_fraction(0.566, 231_607_000) == 131_089_562     # floor(f p + 1e-9) is 1 short
    assert nnz_from_fraction(0.0, 10) == 0 and nnz_from_fraction(1.0, 10) == 10
    assert budgets_from_fractions(100, 50.0, 0.29, 0.5) == (29, 25.0)
    assert budgets_from_fractions(100, 50.0) == (None, None)
    with pytest.raises(InvalidInstanceError, match=r"^`nnz_fraction` must be a number in \[0, 1\]; got 1.5$"):
        nnz_from_fraction(1.5, 10)


def test_export_uses_the_shared_budget_rule():
    torch = pytest.importorskip("torch")
    from falcon_milp.torch.export import budgets_from_fractions as export_budgets
    from falcon_milp.torch.export import export_instance
    from falcon_milp.torch.flops import dense_flops, prunable_layers
    model = torch.nn.Sequential(torch.nn.Linear(10, 10, bias=False))     # p = 100
    layers = prunable_layers(model, torch.zeros(1, 10))
    differ = [k / 100 for k in range(101) if math.floor(k / 100 * 100) != nnz_from_fraction(k / 100, 100)]
    assert 0.29 in differ                           # where the old floor(f * p) was one short
    for f in differ + [0.1, 0.3]:
        assert export_budgets(layers, f, f) == (nnz_from_fraction(f, 100), f * float(dense_flops(layers)))
    assert export_instance(model, torch.zeros(1, 10), nnz_fraction=0.29).max_nnz == 29


@pytest.fixture
def registry_guard():
    before = dict(REGISTRY)
    yield
    for name in [n for n in REGISTRY if n not in before]:
        del REGISTRY[name]


def _keep_all(instance, *, time_limit=None, rel_gap=0.0, threads=None, limit=None):
    mask = np.zeros(instance.n_weights, dtype=bool)
    mask[: instance.max_nnz if limit is None else limit] = True
    return RawSolution(mask, math.inf, "heuristic")


def test_register_solver(registry_guard):
    spec = register_solver("first-s", _keep_all, exact=False, description="the first S weights",
                           flop_aware=False)
    assert REGISTRY["first-s"] is spec and "first-s" in solver_names()
    inst = PruningInstance.from_groups([np.ones(3), np.ones(2)], [1.0, 1.0], max_nnz=2)
    res = solve(inst, "first-s", limit=1)
    assert res.solver == "first-s" and int(res.mask.sum()) == 1
    with pytest.raises(SolverOptionError, match=r"^unknown option `foo` for solver 'first-s'; it accepts: "
                       r"`time_limit`, `rel_gap`, `threads`, `limit`$"):
        solve(inst, "first-s", foo=1)
    with pytest.raises(SolverRegistrationError, match=r"^`name` 'first-s' is already registered"):
        register_solver("first-s", _keep_all, exact=False, description="again")
    with pytest.raises(SolverRegistrationError, match=r"^`name` 'fast' is already registered"):
        register_solver("fast", _keep_all, exact=False, description="shadow")
    with pytest.raises(SolverRegistrationError, match=r"^`func_or_target` must be a function or "
                                                      r"'module:function'; got 'nocolon'$"):
        register_solver("x1", "nocolon", exact=False, description="d")
    with pytest.raises(SolverRegistrationError, match=r"^`func_or_target` must accept the keyword `time_limit`"):
        register_solver("x2", lambda instance: None, exact=False, description="d")
    with pytest.raises(SolverRegistrationError, match=r"^`exact` must be True or False; got 1$"):
        register_solver("x3", _keep_all, exact=1, description="d")
    with pytest.raises(SolverRegistrationError, match=r"^`max_weights` must be None or an integer >= 1; got 0$"):
        register_solver("x4", _keep_all, exact=False, description="d", max_weights=0)
    with pytest.raises(SolverRegistrationError, match=r"^`name` must be a non-empty string without spaces"):
        register_solver("a b", _keep_all, exact=False, description="d")
    register_solver("tiny-only", _keep_all, exact=False, description="d", max_weights=2)
    with pytest.raises(SolverUnavailableError, match=r"takes at most 2 weights"):
        solve(inst, "tiny-only")


def test_availability_really_imports(registry_guard):
    register_solver("ghost", "no_such_module_xyz:solve", exact=False, description="missing module")
    register_solver("ghost-attr", "falcon_milp.solvers.greedy:no_such_function", exact=False, description="d")
    register_solver("ghost-backend", _keep_all, exact=False, description="d", requires=("no_such_backend_xyz",))
    names = solver_names()
    assert {"ghost", "ghost-attr", "ghost-backend"}.isdisjoint(names) and "fast" in names
    with pytest.raises(SolverUnavailableError, match=r"^solver 'ghost' is not available here "
                                                     r"\(ModuleNotFoundError: No module named 'no_such_module_xyz'\)$"):
        get_solver("ghost")
    with pytest.raises(SolverUnavailableError, match=r"cannot import name 'no_such_function'"):
        get_solver("ghost-attr")
    with pytest.raises(SolverUnavailableError, match=r"No module named 'no_such_backend_xyz'"):
        get_solver("ghost-backend")
    with pytest.raises(UnknownSolverError, match=r"^`solver` must be one of .*; got 'nope'$"):
        get_solver("nope")
    assert REGISTRY["highs-ilp"].requires == ("highspy", "pyomo.environ")


# ------------------------------------------------------------------------- mask files
def test_save_and_load_masks_round_trip(tmp_path):
    torch = pytest.importorskip("torch")
    from falcon_milp.torch.architectures import build_model, example_input
    from falcon_milp.torch.flops import dense_nnz, prunable_layers
    from falcon_milp.torch.masks import MASK_FORMAT_VERSION, apply_mask, load_masks, save_masks
    model = build_model("mnist_cnn", seed=0)
    layers = prunable_layers(model, example_input("mnist_cnn"))
    flat = np.random.default_rng(0).random(dense_nnz(layers)) < 0.3
    apply_mask(layers, flat)
    path = tmp_path / "masks"                       # written exactly here, no suffix added
    assert save_masks(model, path) == str(path)
    masks = load_masks(path)
    assert list(masks) == [f"{l.name}.weight" for l in layers]
    for l in layers:
        assert masks[f"{l.name}.weight"].dtype == bool and masks[f"{l.name}.weight"].shape == l.shape
    assert np.array_equal(np.concatenate([masks[f"{l.name}.weight"].ravel() for l in layers]), flat)
    with np.load(path) as data:                     # readable with numpy alone
        assert int(data["format_version"]) == MASK_FORMAT_VERSION == 1
    # the other sources: a list of layers, a mapping, an unmasked model (nonzero pattern)
    save_masks(layers, tmp_path / "l.npz")
    assert all(np.array_equal(load_masks(tmp_path / "l.npz")[k], v) for k, v in masks.items())
    save_masks({"fc.weight": torch.tensor([True, False])}, tmp_path / "m.npz")
    assert load_masks(tmp_path / "m.npz")["fc.weight"].tolist() == [True, False]
    plain = build_model("mnist_mlp", seed=0)
    with torch.no_grad():
        plain.fc1.weight[0, :5] = 0
    got = load_masks(save_masks(plain, tmp_path / "p.npz"))
    assert set(got) == {"fc1.weight", "fc2.weight", "fc3.weight"} and got["fc1.weight"][0, :5].sum() == 0


def test_load_masks_messages(tmp_path):
    pytest.importorskip("torch")
    from falcon_milp.torch import DataFileError, ModelError
    from falcon_milp.torch.masks import load_masks, save_masks
    with pytest.raises(DataFileError, match=r"^mask file '.*nope.npz' does not exist$"):
        load_masks(tmp_path / "nope.npz")
    (tmp_path / "g.npz").write_bytes(b"garbage")
    with pytest.raises(DataFileError, match=r"^mask file '.*g.npz' is not an \.npz archive$"):
        load_masks(tmp_path / "g.npz")
    with open(tmp_path / "v.npz", "wb") as fh:
        np.savez(fh, format_version=np.int64(7), w=np.ones(2, dtype=bool))
    with pytest.raises(DataFileError, match=r"`format_version` must be 1; got 7$"):
        load_masks(tmp_path / "v.npz")
    with open(tmp_path / "f.npz", "wb") as fh:
        np.savez(fh, format_version=np.int64(1), w=np.ones(2))
    with pytest.raises(DataFileError, match=r"mask 'w' must be a bool array; got dtype float64$"):
        load_masks(tmp_path / "f.npz")
    with pytest.raises(ModelError, match=r"^`masks\['w'\]` must be a bool array; got dtype float64$"):
        save_masks({"w": np.ones(2)}, tmp_path / "x.npz")
    assert zipfile.is_zipfile(tmp_path / "v.npz")


def test_prune_mask_out_round_trip(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from falcon_milp.torch.masks import load_masks
    masks_file, weights = tmp_path / "m.npz", tmp_path / "p.pt"
    code, out, err = cli(["prune", "--arch", "mnist_mlp", "--flops-fraction", "0.2", "--method", "magnitude",
                          "--no-progress", "--mask-out", str(masks_file), "-o", str(weights), "--json"], capsys)
    assert code == 0, err
    report = _strict_json(out)
    assert report["mask_out"] == str(masks_file)
    masks = load_masks(masks_file)
    state = torch.load(weights, weights_only=True)
    assert set(masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert all(np.array_equal(masks[k], (state[k] != 0).numpy()) for k in masks)
    assert sum(int(m.sum()) for m in masks.values()) == report["kept_nnz"]
