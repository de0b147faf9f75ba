import json
import math

import numpy as np
import pytest

from falcon_milp import InstanceFileError, PruningInstance, load_instance, save_instance


def sample(dtype=np.float64):
    rng = np.random.default_rng(0)
    return PruningInstance.from_groups(
        [rng.random(7).astype(dtype), rng.random(3).astype(dtype)], [12544.0, 0.1], max_nnz=5,
        max_flops=math.inf, names=["conv1", "fc"], extra_resources={"bytes": ([2.0, 4.0], 30.0)},
        metadata={"model": "toy", "input_shape": [1, 3, 8, 8]})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_exact(tmp_path, dtype):
    inst = sample(dtype)
    path = save_instance(inst, tmp_path / "x")
    assert path.name == "x.npz"
    back = load_instance(path)
    assert back.importance.dtype == dtype
    np.testing.assert_array_equal(back.importance, inst.importance)
    np.testing.assert_array_equal(back.group_sizes, inst.group_sizes)
    np.testing.assert_array_equal(back.costs, inst.costs)
    assert back.budgets == inst.budgets and isinstance(back.max_nnz, int)
    assert back.names == inst.names and back.resource_names == inst.resource_names
    assert back.metadata == inst.metadata


def test_readable_with_numpy_alone(tmp_path):
    path = save_instance(sample(), tmp_path / "x.npz")
    with np.load(path) as data:
        header = json.loads(data["header"].tobytes().decode())
        assert header["schema_version"] == 1
        assert header["budgets"][1] is None  # infinite FLOP budget
        assert data["importance"].size == int(data["group_sizes"].sum())


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_missing_path(tmp_path):
    with pytest.raises(InstanceFileError, match=r"instance file '.*nope.npz' does not exist"):
        load_instance(tmp_path / "nope.npz")


def test_directory(tmp_path):
    with pytest.raises(InstanceFileError, match=r"is a directory"):
        load_instance(tmp_path)


def test_truncated(tmp_path):
    path = save_instance(sample(), tmp_path / "x.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InstanceFileError, match=r"is truncated or corrupt"):
        load_instance(path)


def test_garbage(tmp_path):
    path = tmp_path / "g.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(InstanceFileError, match=r"is not an \.npz archive \(no zip signature\)$"):
        load_instance(path)


def test_unknown_schema(tmp_path):
    inst = sample()
    header = json.dumps({"schema_version": 99, "names": [], "resource_names": [], "budgets": []}).encode()
    path = tmp_path / "v.npz"
    _write(path, importance=inst.importance, group_sizes=inst.group_sizes, costs=inst.costs,
           header=np.frombuffer(header, np.uint8))
    with pytest.raises(InstanceFileError, match=r"unknown `schema_version` 99; this version reads 1"):
        load_instance(path)


def test_missing_array(tmp_path):
    path = tmp_path / "m.npz"
    _write(path, importance=np.ones(3))
    with pytest.raises(InstanceFileError, match=r"missing array `group_sizes`"):
        load_instance(path)


def test_invalid_content_names_field(tmp_path):
    inst = sample()
    path = save_instance(inst, tmp_path / "x.npz")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["importance"] = arrays["importance"].copy()
    arrays["importance"][8] = -1.0
    _write(path, **arrays)
    with pytest.raises(InstanceFileError, match=r"`importances` of group 'fc' must be finite and >= 0; got -1.0 at index 1"):
        load_instance(path)


def test_bad_header_json(tmp_path):
    inst = sample()
    path = tmp_path / "h.npz"
    _write(path, importance=inst.importance, group_sizes=inst.group_sizes, costs=inst.costs,
           header=np.frombuffer(b"{oops", np.uint8))
    with pytest.raises(InstanceFileError, match=r"`header` is not valid JSON"):
        load_instance(path)


def test_cost_shape_mismatch(tmp_path):
    inst = sample()
    header = json.dumps({"schema_version": 1, "names": ["a", "b"], "resource_names": ["nnz", "flops"],
                         "budgets": [1, 1]}).encode()
    path = tmp_path / "c.npz"
    _write(path, importance=inst.importance, group_sizes=inst.group_sizes, costs=inst.costs,
           header=np.frombuffer(header, np.uint8))
    with pytest.raises(InstanceFileError, match=r"`costs` must have shape \(groups, resources\) = \(2, 2\)"):
        load_instance(path)


def test_unserialisable_metadata(tmp_path):
    inst = PruningInstance.from_groups([np.ones(2)], [1.0], metadata={"x": object()})
    with pytest.raises(InstanceFileError, match=r"`metadata` must be JSON-serialisable"):
        save_instance(inst, tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_fuzz_findings_give_one_line_errors() -> None:
    """Inputs the fuzzer (fuzz/fuzz_instance.py) found: each a one-line InstanceFileError now."""
    from pathlib import Path
    import pytest
    from falcon_milp import load_instance
    from falcon_milp.exceptions import InstanceFileError
    findings = sorted((Path(__file__).resolve().parents[1] / "fuzz" / "findings").glob("crash-*"))
    assert findings, "the committed findings are missing"
    for f in findings:
        with pytest.raises(InstanceFileError) as info:
            load_instance(f)
        assert "\n" not in str(info.value) and "corrupt" in str(info.value)
