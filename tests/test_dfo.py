"""The quadratic model, DFO (IHT with ILP projections), the backsolve and the schedules."""
import numpy as np
import pytest
import torch

from falcon_milp import InvalidInstanceError, OptionError, PruningInstance, check_mask, solve, solver_names
from falcon_milp.torch.backsolve import BlockPreconditioner, backsolve, block_ranges
from falcon_milp.torch.dfo import Projector, dfo
from falcon_milp.torch.quadratic import QuadraticModel, default_lam2, lipschitz_constant
from falcon_milp.torch.schedules import gradual_epochs, polynomial_schedule, stage_budgets

from tiny import brute_force

FLOP_AWARE = [s for s in ("ratio-greedy", "fast", "exact") if s in solver_names()]


def problem(seed, n=20, sizes=(30, 50, 20), dtype=np.float64, lam2=0.05, alpha=0.0):
    rng = np.random.default_rng(seed)
    p = sum(sizes)
    X = (rng.standard_normal((n, p)) / np.sqrt(n)).astype(dtype)
    w0 = rng.standard_normal(p)
    g = rng.standard_normal(p) if alpha else None
    return QuadraticModel(X, w0, lam2, alpha, g), list(sizes)


def dense_q(m, w):
    X = np.asarray(m.X, dtype=np.float64)
    d = w - m.w0
    val = 0.5 * np.sum((X @ d) ** 2) + m.lam2 * d @ d
    return val + (m.alpha * m.g @ d if m.alpha else 0.0)


# ----------------------------------------------------------------------------- quadratic model
@pytest.mark.parametrize("seed", range(3))
def test_value_and_gradient_match_dense_and_finite_differences(seed):
    m, _ = problem(seed, alpha=0.3)
    rng = np.random.default_rng(100 + seed)
    w = rng.standard_normal(m.p)
    q, grad = m.value_and_grad(w)
    assert q == pytest.approx(dense_q(m, w), rel=1e-10)
    assert m.value(m.w0) == 0.0
    eps = 1e-6
    for i in rng.choice(m.p, 8, replace=False):
        e = np.zeros(m.p)
        e[i] = eps
        fd = (m.value(w + e) - m.value(w - e)) / (2 * eps)
        assert fd == pytest.approx(grad[i], rel=1e-5, abs=1e-7)


def test_gradient_matches_autograd_in_float32():
    m, _ = problem(7, dtype=np.float32, alpha=0.5)
    w = np.random.default_rng(1).standard_normal(m.p)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    X = torch.from_numpy(np.asarray(m.X, dtype=np.float64))
    d = wt - torch.from_numpy(m.w0)
    q = 0.5 * (X @ d).square().sum() + m.lam2 * d.square().sum() + m.alpha * (torch.from_numpy(m.g) @ d)
    q.backward()
    np.testing.assert_allclose(m.gradient(w), wt.grad.numpy(), rtol=1e-4, atol=1e-5)
    hv = m.hessvec(w)
    np.testing.assert_allclose(hv, (X.T @ (X @ wt.detach())).numpy() + 2 * m.lam2 * w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_lipschitz_constant_brackets_the_top_eigenvalue(seed):
    m, _ = problem(seed, n=15)
    top = np.linalg.norm(np.asarray(m.X), 2) ** 2 + 2 * m.lam2
    L = m.lipschitz(iters=200, tol=1e-12)
    assert L >= top * (1 - 1e-9)
    assert L <= np.sum(np.asarray(m.X) ** 2) + 2 * m.lam2 + 1e-12
    assert lipschitz_constant(np.zeros((3, 4)), 0.5) == 1.0


def test_default_lam2_is_relative_to_the_fisher_diagonal():
    X = np.full((4, 10), 0.5, dtype=np.float32)
    assert default_lam2(X, 1.0) == pytest.approx(4 * 0.25)
    assert default_lam2(X, 1e-2) == pytest.approx(1e-2)


def test_quadratic_model_errors():
    X = np.zeros((3, 4))
    with pytest.raises(InvalidInstanceError, match=r"`X` must be a 2-D \(n, p\) array; got shape \(4,\)"):
        QuadraticModel(np.zeros(4), np.zeros(4))
    with pytest.raises(InvalidInstanceError, match=r"`w0` must have X.shape\[1\] = 4 entries; got 3"):
        QuadraticModel(X, np.zeros(3))
    with pytest.raises(OptionError, match=r"`lam2` must be a finite number >= 0; got -1"):
        QuadraticModel(X, np.zeros(4), lam2=-1)
    with pytest.raises(InvalidInstanceError, match=r"`g` is required when `alpha` is nonzero"):
        QuadraticModel(X, np.zeros(4), alpha=1.0)
    with pytest.raises(InvalidInstanceError, match=r"`X` must be float32, float64, bfloat16 or float16; got dtype int64"):
        QuadraticModel(np.zeros((3, 4), dtype=np.int64), np.zeros(4))


# ----------------------------------------------------------------------------- DFO
@pytest.mark.parametrize("solver", FLOP_AWARE)
@pytest.mark.parametrize("seed", range(4))
def test_dfo_objective_non_increasing_and_masks_feasible(solver, seed):
    m, sizes = problem(seed)
    rng = np.random.default_rng(seed)
    flops = [4.0, 1.0, 2.0]
    total = float(np.dot(sizes, flops))
    s = int(rng.integers(10, 60))
    f = float(rng.uniform(0.15, 0.6) * total)
    proj = Projector(sizes, flops, s, f, solver=solver)
    masks = []

    class Recorder:
        def __call__(self, imp):
            mask = proj(imp)
            masks.append(mask)
            return mask

    res = dfo(m, Recorder(), max_iter=40, tol=0.0)
    hist = np.array(res.history)
    assert np.all(np.diff(hist) <= 1e-12 * np.abs(hist[:-1])), hist
    inst = PruningInstance.from_flat(np.ones(m.p), sizes, flops, max_nnz=s, max_flops=f)
    for mask in masks + [res.mask]:
        assert check_mask(inst, mask).feasible
    assert np.all(res.w[~res.mask] == 0)
    assert res.objective == pytest.approx(m.value(res.w), rel=1e-9)


def test_dfo_with_a_bad_projection_is_still_monotone():
    """A projection that returns poor (but feasible) masks is caught by the safeguard."""
    m, sizes = problem(3)
    rng = np.random.default_rng(0)

    def bad(imp):
        mask = np.zeros(imp.size, dtype=bool)
        mask[rng.choice(imp.size, 25, replace=False)] = True
        return mask

    res = dfo(m, bad, max_iter=30, tol=0.0)
    assert np.all(np.diff(res.history) <= 1e-12 * np.abs(np.array(res.history[:-1])))
    assert res.n_safeguarded > 0


@pytest.mark.parametrize("step", ["lipschitz", "adaptive"])
def test_dfo_step_rules_and_refinement_decrease_q(step):
    m, sizes = problem(5)
    proj = Projector(sizes, [4.0, 1.0, 2.0], 40, 120.0, solver="ratio-greedy")
    plain = dfo(m, proj, max_iter=30, tol=0.0, step=step)
    refined = dfo(m, proj, max_iter=30, tol=0.0, step=step, refine_iters=5, patience=3)
    for res in (plain, refined):
        assert np.all(np.diff(res.history) <= 1e-12 * np.abs(np.array(res.history[:-1])))
        assert res.objective < res.history[0] or len(res.history) == 1


def test_dfo_in_a_diagonal_metric_is_monotone_and_projects_on_d_u2():
    m, sizes = problem(8)
    D = m.diag_hessian()
    assert D == pytest.approx(np.sum(np.asarray(m.X) ** 2, axis=0) + 2 * m.lam2)
    LD = m.lipschitz(metric=D, iters=200, tol=1e-12)
    Xs = np.asarray(m.X) / np.sqrt(D)
    assert LD >= np.linalg.norm(Xs, 2) ** 2 * (1 - 1e-9)
    seen = []
    proj = Projector(sizes, [4.0, 1.0, 2.0], 40, 120.0, solver="ratio-greedy")

    def record(imp):
        seen.append(imp)
        return proj(imp)

    res = dfo(m, record, metric=D, max_iter=30, tol=0.0)
    assert np.all(np.diff(res.history) <= 1e-12 * np.abs(np.array(res.history[:-1])))
    np.testing.assert_allclose(seen[0], D * m.w0 ** 2)          # first projection: OBD saliency
    with pytest.raises(InvalidInstanceError, match=r"`metric` must be 100 finite numbers > 0"):
        dfo(m, proj, metric=np.zeros(m.p))


def test_projection_with_exact_solver_is_the_euclidean_projection():
    if "exact" not in solver_names():
        pytest.skip("exact solver not installed")  # pragma: no cover
    rng = np.random.default_rng(2)
    sizes, flops = [4, 5, 3], [3.0, 1.0, 2.0]
    for _ in range(5):
        u = rng.standard_normal(12)
        proj = Projector(sizes, flops, 6, 12.0, solver="exact")
        mask = proj(u * u)
        best, _ = brute_force(PruningInstance.from_flat(u * u, sizes, flops, max_nnz=6, max_flops=12.0))
        assert float(np.sum(u[mask] ** 2)) == pytest.approx(best, rel=1e-12)
        # the projection's distance is minimal: ||u - P(u)||^2 = ||u||^2 - best
        assert np.sum(np.where(mask, 0, u) ** 2) == pytest.approx(np.sum(u * u) - best, rel=1e-9)


def test_projector_and_dfo_errors():
    from falcon_milp import UnknownSolverError
    with pytest.raises(UnknownSolverError, match="`solver` must be one of"):
        Projector([3], [1.0], 2, None, solver="nope")
    with pytest.raises(InvalidInstanceError, match=r"`max_nnz` must be an integer >= 0; got -1"):
        Projector([3], [1.0], -1, None, solver="ratio-greedy")
    proj = Projector([3], [1.0], 2, None, solver="magnitude")
    with pytest.raises(InvalidInstanceError, match="projection solver 'magnitude' returned status 'infeasible'"):
        Projector([3], [2.0], 3, 2.0, solver="magnitude")(np.array([1.0, 2.0, 3.0]))
    m, sizes = problem(0)
    with pytest.raises(OptionError, match=r"`max_iter` must be an integer >= 1; got 0"):
        dfo(m, proj, max_iter=0)
    with pytest.raises(OptionError, match=r"`step` must be one of 'linesearch', 'lipschitz', 'adaptive'; got 'big'"):
        dfo(m, proj, step="big")
    with pytest.raises(OptionError, match=r"`patience` must be None or an integer >= 1; got 0"):
        dfo(m, proj, patience=0)


# ----------------------------------------------------------------------------- backsolve
def dense_support_minimiser(m, mask):
    X = np.asarray(m.X, dtype=np.float64)
    H = X.T @ X + 2 * m.lam2 * np.eye(m.p)
    K, P = np.flatnonzero(mask), np.flatnonzero(~mask)
    rhs = H[np.ix_(K, P)] @ (-m.w0[P]) + (m.alpha * m.g[K] if m.alpha else 0.0)
    w = np.zeros(m.p)
    w[K] = m.w0[K] - np.linalg.solve(H[np.ix_(K, K)], rhs)
    return w


@pytest.mark.parametrize("block_size", [7, 25, 1000])
@pytest.mark.parametrize("seed", range(2))
def test_backsolve_matches_dense_solve(block_size, seed):
    m, sizes = problem(seed, n=12, alpha=0.2)
    mask = np.random.default_rng(seed).random(m.p) < 0.6
    exact = dense_support_minimiser(m, mask)
    res = backsolve(m, mask, group_sizes=sizes, block_size=block_size, max_iter=200, tol=1e-12)
    np.testing.assert_allclose(res.w, exact, rtol=1e-6, atol=1e-8)
    assert res.objective == pytest.approx(m.value(exact), rel=1e-8)
    assert np.all(res.w[~mask] == 0)


def test_one_block_backsolve_is_exact_in_one_step_both_forms():
    for n in (10, 200):  # dual (Woodbury) form when n < support, primal otherwise
        m, sizes = problem(4, n=n)
        mask = np.random.default_rng(1).random(m.p) < 0.5
        pre = BlockPreconditioner(m, mask, [(0, m.p)])
        assert pre.forms == ["dual" if n < mask.sum() else "primal"]
        res = backsolve(m, mask, block_size=10_000, max_iter=1)
        assert res.objective == pytest.approx(m.value(dense_support_minimiser(m, mask)), rel=1e-7)


def test_backsolve_never_increases_q_and_blocks_stay_in_groups():
    m, sizes = problem(6, n=8)
    mask = np.random.default_rng(2).random(m.p) < 0.4
    w_start = np.where(mask, m.w0 + 0.1, 0.0)
    res = backsolve(m, mask, w_start=w_start, group_sizes=sizes, block_size=9, max_iter=1)
    assert res.objective <= m.value(w_start) + 1e-12
    blocks = block_ranges(sizes, m.p, 9)
    edges = np.cumsum([0] + sizes)
    assert blocks[0][0] == 0 and blocks[-1][1] == m.p
    for (a, b), (c, _) in zip(blocks, blocks[1:] + [(m.p, None)]):
        assert b == c and 0 < b - a <= 9
        assert np.searchsorted(edges, a, side="right") == np.searchsorted(edges, b - 1, side="right")
    with pytest.raises(OptionError, match=r"`block_size` must be an integer >= 1; got 0"):
        block_ranges(sizes, m.p, 0)
    with pytest.raises(InvalidInstanceError, match=r"`mask` must have p = 100 entries; got 3"):
        backsolve(m, np.ones(3, dtype=bool))


# ----------------------------------------------------------------------------- schedules
def test_polynomial_schedule():
    s = polynomial_schedule(0.7, 0.1, 5)
    assert s[0] == pytest.approx(0.7) and s[-1] == 0.1 and len(s) == 5
    assert all(a >= b for a, b in zip(s, s[1:]))
    assert polynomial_schedule(0.7, 0.1, 1) == [0.1]
    assert polynomial_schedule(0.5, 0.8, 3) == [0.8, 0.8, 0.8]          # start clipped to the target
    lin = polynomial_schedule(1.0, 0.0, 5, power=1.0)
    np.testing.assert_allclose(lin, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert stage_budgets(0.2, None, 3) == [(None, pytest.approx(0.7)), (None, pytest.approx(0.2 + 0.5 / 8)),
                                            (None, 0.2)]
    with pytest.raises(OptionError, match=r"`end` must be in \[0, 1\]; got 1.5"):
        polynomial_schedule(0.7, 1.5, 3)
    with pytest.raises(OptionError, match=r"`stages` must be an integer >= 1; got 0"):
        polynomial_schedule(0.7, 0.1, 0)
    with pytest.raises(OptionError, match=r"`power` must be a finite number > 0; got 0"):
        polynomial_schedule(0.7, 0.1, 3, power=0)
    with pytest.raises(OptionError, match=r"`flops_fraction` must be in \[0, 1\]; got -0.1"):
        stage_budgets(-0.1, None, 3)


def test_gradual_epochs():
    assert gradual_epochs(10, 3) == [0, 4, 9]
    assert gradual_epochs(4, 4) == [0, 1, 2, 3]
    assert gradual_epochs(6, 1, first=2) == [2]
    assert gradual_epochs(10, 2, first=1, last=5) == [1, 5]
    with pytest.raises(OptionError, match=r"`n_prunes` must be at most last - first \+ 1 = 3; got 4"):
        gradual_epochs(3, 4)
    with pytest.raises(OptionError, match=r"`first` <= `last` < `n_epochs` must hold; got 0, 5, 5"):
        gradual_epochs(5, 2, last=5)
