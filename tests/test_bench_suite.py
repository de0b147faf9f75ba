"""The committed instance suite and its MANIFEST: brute-force agreement, determinism, format."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from falcon_milp import load_instance
from falcon_milp.bench.suite import (SUITE_SETTINGS, SuiteError, named_suite, parse_synthetic,
                                     problem_digest, read_manifest, resolve_suite)
from tiny import brute_force, tiny_instances

ROOT = Path(__file__).resolve().parents[1]
INSTANCES = ROOT / "instances"
MANIFEST = read_manifest(INSTANCES / "MANIFEST")


def _make_suite_module():
    spec = importlib.util.spec_from_file_location("make_suite", ROOT / "scripts" / "make_suite.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_manifest_lists_every_committed_file() -> None:
    files = {p.relative_to(INSTANCES).with_suffix("").as_posix() for p in INSTANCES.rglob("*.npz")}
    assert files, "no committed instances"
    assert files <= set(MANIFEST), sorted(files - set(MANIFEST))
    for entry in MANIFEST.values():
        if not entry.synthetic:
            assert (INSTANCES / entry.source).is_file(), entry.name


@pytest.mark.parametrize("name", sorted(n for n in MANIFEST if n.startswith("tiny/")))
def test_manifest_bounds_agree_with_brute_force(name: str) -> None:
    entry = MANIFEST[name]
    inst = load_instance(INSTANCES / entry.source)
    assert inst.n_weights <= 16
    opt, mask = brute_force(inst)
    assert mask is not None
    assert entry.best.optimal
    assert entry.best.lower == pytest.approx(opt, rel=1e-12, abs=1e-15)
    assert entry.best.upper == pytest.approx(opt, rel=1e-12, abs=1e-15)
    assert "brute-force" in entry.best.lower_by and "brute-force" in entry.best.upper_by
    assert entry.digest == problem_digest(inst)
    assert entry.n_weights == inst.n_weights and entry.n_groups == inst.n_groups


def test_tiny_files_are_the_cases_of_tests_tiny() -> None:
    for name, inst in tiny_instances().items():
        saved = load_instance(INSTANCES / "tiny" / f"{name}.npz")
        assert problem_digest(saved) == problem_digest(inst), name


def test_small_files_regenerate_identically() -> None:
    mod = _make_suite_module()
    for name, (build, _prov) in mod.SMALL.items():
        inst = build()
        entry = MANIFEST[f"small/{name}"]
        assert problem_digest(inst) == entry.digest, name
        assert 100 <= inst.n_weights <= 10_000
    for name, inst in mod.tiny_extra().items():
        assert problem_digest(inst) == MANIFEST[f"tiny/{name}"].digest, name


def test_manifest_entries_are_consistent() -> None:
    for entry in MANIFEST.values():
        b = entry.best
        assert b.lower is not None and b.upper is not None, entry.name
        assert b.lower <= b.upper, entry.name
        assert b.lower_by and b.upper_by, entry.name
        assert "full" in entry.suites
        assert set(entry.budgets) >= {"nnz", "flops"}
    for entry in MANIFEST.values():
        if entry.name.startswith("small/"):
            assert entry.best.optimal, f"{entry.name}: small instances must have a proven optimum"


def test_manifest_lines_are_sorted_json() -> None:
    lines = (INSTANCES / "MANIFEST").read_text().splitlines()
    names = [json.loads(l)["name"] for l in lines]
    assert names == sorted(names)


def test_committed_suite_is_small() -> None:
    total = sum(p.stat().st_size for p in INSTANCES.rglob("*") if p.is_file())
    assert total < 5 * 2**20


def test_named_suites_resolve() -> None:
    quick = named_suite("quick")
    full = named_suite("full")
    assert quick.time_limit == SUITE_SETTINGS["quick"].time_limit
    qn, fn = [e.name for e in quick.entries], [e.name for e in full.entries]
    assert set(qn) <= set(fn) and len(qn) < len(fn)
    assert any(n.startswith("tiny/") for n in qn) and any(n.startswith("small/") for n in qn)
    assert len(set(fn)) == len(fn)
    for e in full.entries:
        assert e.best is not None and e.digest is not None


def test_paths_take_manifest_bounds() -> None:
    suite = resolve_suite([str(INSTANCES / "tiny" / "both-binding.npz"), str(INSTANCES / "small")])
    names = [e.name for e in suite.entries]
    assert names[0] == "tiny/both-binding"
    assert all(e.best is not None for e in suite.entries)
    assert {n for n in names if n.startswith("small/")} == {n for n in MANIFEST if n.startswith("small/")}


def test_synthetic_names() -> None:
    s = parse_synthetic("synthetic:resnet20:nnz0.3:flops0.2:seed0")
    assert (s.arch, s.nnz_fraction, s.flops_fraction, s.seed, s.dtype) == ("resnet20", 0.3, 0.2, 0, "float32")
    assert s.name == "synthetic:resnet20:nnz0.3:flops0.2:seed0:float32"
    s = parse_synthetic("synthetic:layered5000x7:nnz0.5:flops0.1:seed3:float64")
    assert (s.arch, s.dtype) == ("layered5000x7", "float64")
    with pytest.raises(SuiteError, match=r"needs 1 <= L <= p; got 5x7"):
        parse_synthetic("synthetic:layered5x7:nnz0.5:flops0.1:seed3")
    with pytest.raises(SuiteError, match=r"flops fraction must be in \[0, 1\]; got 2.0"):
        parse_synthetic("synthetic:resnet50:nnz0.5:flops2:seed3")


def test_synthetic_entry_builds_deterministically() -> None:
    suite = resolve_suite(["synthetic:layered2000x5:nnz0.3:flops0.2:seed1"])
    a, b = suite.entries[0].load(), suite.entries[0].load()
    assert a.n_weights == 2000 and a.n_groups == 5
    assert problem_digest(a) == problem_digest(b)
    np.testing.assert_array_equal(a.importance, b.importance)
