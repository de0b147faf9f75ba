"""`falcon-milp sweep`: config checks (one line naming the key, exit 2), records, resume, failed
runs, Ctrl-C, summary and Pareto plot; executor options; no torch / dask at import."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from falcon_milp.cli import main
from falcon_milp.torch import sweep

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sweep_mnist_cnn.toml"

GOOD = '[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = ["magnitude", "falcon"]\nflops_fraction = [0.3, 0.5]\n'


def _write(tmp_path: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_no_torch_or_dask_at_import():
    code = ("import sys, falcon_milp, falcon_milp.cli, falcon_milp.executors, falcon_milp.bench.bench_command, "
            "falcon_milp.torch.sweep, falcon_milp.torch.sweep_command; falcon_milp.cli.build_parser(); "
            "bad = [m for m in ('torch', 'dask', 'distributed') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_method_names_match_prune():
    pytest.importorskip("torch")
    from falcon_milp.torch.prune import METHODS
    from falcon_milp.torch.prune_command import METHODS as CLI_METHODS
    assert CLI_METHODS == METHODS


def test_example_config_plans_18_runs(tmp_path, capsys):
    assert main(["sweep", str(EXAMPLE), "--dry-run", "--out", str(tmp_path / "x")]) == 0
    out = capsys.readouterr().out
    assert "18 runs, 0 already recorded" in out and "mnist_cnn falcon (flops 0.3) seed 1" in out
    assert not (tmp_path / "x").exists()
    config = sweep.load_config(EXAMPLE)
    runs = config.runs()
    assert len(runs) == 18 and len({r.run_id for r in runs}) == 18
    assert {r.options["method"] for r in runs} == {"magnitude", "obs", "falcon"}
    assert sorted({r.options["flops_fraction"] for r in runs}) == [0.1, 0.2, 0.3]
    assert {r.options["seed"] for r in runs} == {0, 1}
    assert config.runs()[5].run_id == runs[5].run_id          # run ids are stable


@pytest.mark.parametrize("text, message", [
    ("[[model]\n", r"is not valid TOML: "),
    ('titel = "x"\n' + GOOD, r"`titel` is not a sweep setting; use title, data"),
    ("[grid]\nmethod = 'falcon'\nflops_fraction = 0.3\n", r"`model` is missing: add a \[\[model\]\] table"),
    ('[[model]]\narch = "vgg"\n[grid]\n', r"`model\[1\]\.arch` must be one of resnet20, .*; got 'vgg'"),
    ('[[model]]\nchkpt = "x.pt"\n', r"`model\[1\]\.chkpt` is not a model setting; use arch, checkpoint"),
    ('[[model]]\narch = "mnist_mlp"\ncheckpoint = "none.pt"\n', r"`model\[1\]\.checkpoint` 'none\.pt' does not exist"),
    ('data = "random"\n[[model]]\narch = "resnet20"\n', r"`model\[1\]\.checkpoint` is required for arch 'resnet20'"),
    ('[[model]]\narch = "resnet20"\nrandom_init = true\n', r"`data` is required for arch 'resnet20'"),
    ('[[model]]\narch = "mnist_mlp"\n[[model]]\narch = "mnist_mlp"\n', r"`model\[2\]\.name` 'mnist_mlp' is used by another model"),
    ('[[model]]\narch = "mnist_mlp"\n', r"`grid` is missing: add a \[grid\] table"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nflops_fraction = 0.3\n', r"`grid\.method` is missing; one or more of falcon, falcon\+\+"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\n', r"`grid\.flops_fraction` is missing: give `flops_fraction` and/or `nnz_fraction`"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = ["falcon", "chita"]\nflops_fraction = 0.3\n', r"`grid\.method\[1\]` must be one of falcon, .*; got 'chita'"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = [0.3, 1.5]\n', r"`grid\.flops_fraction\[1\]` must be in \[0, 1\]; got 1\.5"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = [0.3, 0.3]\n', r"`grid\.flops_fraction` lists 0\.3 twice"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = []\n', r"`grid\.flops_fraction` is an empty list"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = 0.3\nlam3 = 1\n', r"`grid\.lam3` is not a grid option; use method, "),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = 0.3\nn_grads = 0\n', r"`grid\.n_grads` must be an integer >= 1; got 0"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = 0.3\nlam2_rel = [0.01, -1]\n', r"`grid\.lam2_rel\[1\]` must be a number > 0; got -1"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = 0.3\nsolver = "cplex"\n', r"`grid\.solver` must be one of highs-ilp, .*; got 'cplex'"),
    ('[[model]]\narch = "mnist_mlp"\n[grid]\nmethod = "falcon"\nflops_fraction = 0.3\nsafeguard = 1\n', r"`grid\.safeguard` must be true or false; got 1"),
    ('threads = 0\n' + GOOD, r"`threads` must be an integer >= 1; got 0"),
    ('test_data = "."\n' + GOOD, r"`test_data` directory '\.' holds no test set"),
    ('data = "nowhere"\n' + GOOD, r"`data` must be 'mnist5k', 'random' or a directory; 'nowhere' is neither"),
])
def test_bad_config_gives_one_line_naming_the_key(tmp_path, capsys, text, message):
    path = _write(tmp_path, text)
    rc = main(["sweep", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1, err
    assert re.match(r"^falcon-milp sweep: error: config '.*s\.toml':? " + message, err), err
    assert not (tmp_path / "out").exists()


def test_choice_options_checked_against_the_torch_side(tmp_path, capsys):
    pytest.importorskip("torch")
    path = _write(tmp_path, GOOD + 'fisher = "observed"\n')
    assert main(["sweep", str(path)]) == 2
    assert "`grid.fisher` must be one of empirical, sampled; got 'observed'" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--executor", "local", "--jobs", "2"], r"`--jobs 2` needs `--executor processes` or `dask`"),
    (["--executor", "processes", "--scheduler", "tcp://h:8786"], r"`--scheduler` needs `--executor dask`; got `--executor processes`"),
    (["--scheduler", "tcp://h:8786", "--jobs", "3"], r"`--jobs` sizes a LocalCluster; with `--scheduler`"),
    (["--jobs", "0"], r"`--jobs` must be an integer >= 1; got 0"),
    (["--config-missing"], None),
])
def test_bad_executor_options(tmp_path, capsys, args, message):
    path = _write(tmp_path, GOOD)
    if message is None:
        with pytest.raises(SystemExit) as exc:
            main(["sweep", str(path), *args])
        assert exc.value.code == 2
        return
    for command in (["sweep", str(path)], ["bench", "--suite", str(ROOT / "instances/tiny/p16.npz")]):
        rc = main([*command, *args, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and re.search(message, err), err


def test_missing_config_and_dask_not_installed(tmp_path, capsys, monkeypatch):
    assert main(["sweep", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err == f"falcon-milp sweep: error: config '{tmp_path / 'none.toml'}' does not exist\n"
    monkeypatch.setitem(sys.modules, "distributed", None)      # import distributed -> ImportError
    rc = main(["bench", "--suite", str(ROOT / "instances/tiny/p16.npz"), "--executor", "dask",
               "--out", str(tmp_path / "b"), "--quiet", "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("falcon-milp bench: error: `--executor dask` needs dask.distributed, which is "
                               "not installed here: pip install 'falcon-milp[dask]'\n")


# ----------------------------------------------------------------------------- runs (fake and real)
def _fake_run(run):
    """A record as run_one would write it, without torch: accuracy falls with the budget."""
    rec = sweep.lost_record(run, "")
    f = run.options["flops_fraction"]
    rec.update(status="ok", error=None, test_accuracy=0.5 + f / 2 + (0.1 if run.options["method"] == "falcon" else 0),
               dense_test_accuracy=0.95, kept_flops_fraction=f, kept_nnz_fraction=f, times={"total": 0.1},
               wall_s=0.1, host="h", worker_pid=1)
    return rec


def _records(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]


def test_resume_skips_recorded_runs_and_cuts_a_torn_line(tmp_path, monkeypatch, capsys):
    path, out = _write(tmp_path, GOOD), tmp_path / "out"
    calls = []
    monkeypatch.setattr(sweep, "run_one", lambda run: calls.append(run.key) or _fake_run(run))
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    assert sorted(calls) == [0, 1, 2, 3] and len(_records(out)) == 4
    summary = (out / "summary.md").read_text()
    assert "4 of 4 planned recorded: 4 ok, 0 failed" in summary and "![test accuracy vs kept FLOPs](pareto.png)" in summary
    assert (out / "pareto.png").stat().st_size > 0
    # torn last line (killed while writing) and a new grid point: only the new run is done
    with open(out / "results.jsonl", "a") as fh:
        fh.write('{"run_id": "abc", "sta')
    _write(tmp_path, GOOD.replace("[0.3, 0.5]", "[0.3, 0.5, 0.7]"))
    calls.clear()
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    assert calls == [2, 5]                               # magnitude and falcon at 0.7
    recs = _records(out)                                 # the torn line is gone
    assert len(recs) == 6 and len({r["run_id"] for r in recs}) == 6
    assert "6 of 6 planned recorded" in (out / "summary.md").read_text()
    calls.clear()
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--fresh"]) == 0
    assert sorted(calls) == list(range(6)) and len(_records(out)) == 6


def test_failed_runs_are_kept_skipped_and_retried_on_request(tmp_path, monkeypatch, capsys):
    path, out = _write(tmp_path, GOOD), tmp_path / "out"

    def flaky(run):
        if run.options["method"] == "falcon" and run.options["flops_fraction"] == 0.3:
            rec = sweep.lost_record(run, "")
            rec.update(error="OptionError: boom", host="h")
            return rec
        return _fake_run(run)
    monkeypatch.setattr(sweep, "run_one", flaky)
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 1
    assert "1 runs failed" in capsys.readouterr().err
    text = (out / "summary.md").read_text()
    assert "## Failed runs" in text and "falcon F 0.3 seed 0): OptionError: boom" in text
    monkeypatch.setattr(sweep, "run_one", lambda run: pytest.fail("resume re-ran a recorded run"))
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 1
    monkeypatch.setattr(sweep, "run_one", _fake_run)
    assert main(["sweep", str(path), "--out", str(out), "--quiet", "--retry-failed"]) == 0
    recs = _records(out)
    assert len(recs) == 5 and [r["status"] for r in recs].count("failed") == 1   # history kept
    assert "4 of 4 planned recorded: 4 ok, 0 failed" in (out / "summary.md").read_text()


def test_ctrl_c_keeps_the_records_written(tmp_path, monkeypatch, capsys):
    path, out = _write(tmp_path, GOOD), tmp_path / "out"
    calls = []

    def interrupted_at_the_third(run):
        calls.append(run.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _fake_run(run)
    monkeypatch.setattr(sweep, "run_one", interrupted_at_the_third)
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 130
    assert capsys.readouterr().err.strip().endswith("falcon-milp sweep: interrupted")
    assert len(_records(out)) == 2
    assert "2 of 4 planned recorded: 2 ok, 0 failed (**interrupted**)" in (out / "summary.md").read_text()
    assert json.loads((out / "sweep.json").read_text())["interrupted"] is True


@pytest.mark.slow
def test_real_runs_in_process(tmp_path, capsys):
    """Two real pruning runs of the bundled MLP and one that raises (its checkpoint is for
    another network): the failure is one line and the sweep goes on."""
    torch = pytest.importorskip("torch")
    from falcon_milp.torch.architectures import build_model
    torch.save(build_model("mnist_cnn").state_dict(), tmp_path / "cnn.pt")
    path = _write(tmp_path, 'n_test = 1000\n[[model]]\narch = "mnist_mlp"\n'
                            '[[model]]\narch = "mnist_mlp"\nname = "wrong"\ncheckpoint = "cnn.pt"\n'
                            '[grid]\nmethod = ["magnitude", "falcon"]\nflops_fraction = 0.3\nseed = 0\n'
                            'n_grads = 64\nmax_iter = 3\n')
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out)]) == 1
    table = capsys.readouterr().out
    assert "| `mnist_mlp` | falcon | F 0.3 | 1/1 |" in table and "| `wrong` | magnitude | F 0.3 | 0/1 |" in table
    recs = sorted(_records(out), key=lambda r: r["key"])
    assert [r["status"] for r in recs] == ["ok", "ok", "failed", "failed"]
    for r in recs[:2]:
        assert set(sweep.FIELDS) == set(r)
        assert 0.5 < r["test_accuracy"] <= 1 and r["n_test"] == 1000 and r["dense_test_accuracy"] > 0.9
        assert r["kept_flops_fraction"] <= 0.3 + 1e-9 and r["within_budgets"] is True
        assert r["times"]["total"] > 0 and r["peak_mem_bytes"] >= 0 and r["host"] and r["threads"] == 1
    assert recs[1]["times"]["projections"] > 0
    assert recs[2]["error"].startswith("checkpoint ") and "does not match MNISTMLP" in recs[2]["error"]
    assert (out / "pareto.png").stat().st_size > 0
