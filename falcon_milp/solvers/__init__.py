"""Solvers: a registry of named solvers behind one :func:`solve` function."""
from ..certificate import OPTIMALITY_TOL, RawSolution
from .registry import REGISTRY, SolverSpec, get_solver, register_solver, solve, solver_names

__all__ = ["OPTIMALITY_TOL", "REGISTRY", "RawSolution", "SolverSpec", "get_solver", "register_solver",
           "solve", "solver_names"]
