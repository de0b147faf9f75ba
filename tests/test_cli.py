import json
import re
import subprocess
import sys

import numpy as np
import pytest

from falcon_milp import PruningInstance, save_instance
from falcon_milp.cli import main


@pytest.fixture
def inst_path(tmp_path):
    inst = PruningInstance.from_groups([np.array([5.0, 4, 3]), np.array([3.0, 2.5, 1])], [4, 1],
                                       max_nnz=6, max_flops=9, names=["a", "b"])
    return str(save_instance(inst, tmp_path / "i.npz"))


def test_info(inst_path, capsys):
    assert main(["info", inst_path]) == 0
    out = capsys.readouterr().out
    assert "6 weights in 2 groups" in out and "flops" in out
    assert main(["info", inst_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_weights"] == 6


def test_solve_json_and_mask(inst_path, tmp_path, capsys):
    mask_file = tmp_path / "m.npy"
    assert main(["solve", inst_path, "--solver", "ratio-greedy", "--json", "--mask-out", str(mask_file)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["solver"] == "ratio-greedy" and "mask" not in res and "kept_indices" not in res
    assert {"objective", "bound", "gap", "status", "termination", "runtime_s"} <= set(res)
    mask = np.load(mask_file)
    assert mask.dtype == bool and mask.shape == (6,)
    assert res["objective"] == pytest.approx(float(np.array([5, 4, 3, 3, 2.5, 1.0])[mask].sum()))


def run_cli(argv):
    """Exit code of the CLI, whether it returns or exits (argparse usage errors)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv, message", [
    (["info", "missing.npz"], r"^falcon-milp info: error: instance file 'missing.npz' does not exist$"),
    (["solve", "{inst}", "--solver", "nope"], r"^falcon-milp solve: error: argument --solver: invalid choice: 'nope'"),
    (["solve", "{inst}", "--solver", "ratio-greedy", "--time-limit", "-1"], r"^falcon-milp solve: error: `time_limit` must be a finite number of seconds > 0; got -1.0$"),
    (["solve", "{inst}", "--solver", "ratio-greedy", "--rel-gap", "-0.1"], r"^falcon-milp solve: error: `rel_gap` must be a finite number >= 0; got -0.1$"),
    (["solve", "{inst}", "--solver", "ratio-greedy", "--threads", "0"], r"^falcon-milp solve: error: `threads` must be an integer >= 1; got 0$"),
    (["solve", "{inst}", "--time-limit", "abc"], r"^falcon-milp solve: error: argument --time-limit: invalid float value: 'abc'$"),
    (["frobnicate"], r"^falcon-milp: error: argument command: invalid choice"),
])
def test_errors_one_line_exit_2(argv, message, inst_path, capsys):
    code = run_cli([a.replace("{inst}", inst_path) for a in argv])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert re.search(message, err.strip()), err


def test_corrupt_file_via_subprocess(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"\x00" * 10)
    proc = subprocess.run([sys.executable, "-m", "falcon_milp", "solve", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "is not an .npz archive (no zip signature)" in proc.stderr


def test_import_is_light():
    code = ("import sys, falcon_milp; "
            "print(any(m.split('.')[0] in ('torch', 'pyomo', 'highspy') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
