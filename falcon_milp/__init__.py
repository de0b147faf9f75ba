"""falcon-milp: FLOP-aware pruning as mathematical programming (FALCON, AISTATS 2024).

Importing this package loads numpy only; pyomo, highspy and torch are imported by the
modules that need them.
"""
from .allocation import AllocationProblem, AllocationResult, check_choice, load_allocation, save_allocation
from .exceptions import (FalconError, InstanceFileError, InvalidInstanceError, OptionError, OutputPathError,
                         SolverOptionError, SolverUnavailableError, UnknownSolverError)
from .instance import PruningInstance
from .io import load_instance, save_instance
from .result import SolveResult, check_mask
from .solvers import solve, solver_names
from .solvers.allocation import solve_allocation

__version__ = "0.1.0"
__all__ = ["AllocationProblem", "AllocationResult", "FalconError", "InstanceFileError", "InvalidInstanceError", "OptionError", "OutputPathError", "PruningInstance",
           "SolveResult", "SolverOptionError", "SolverUnavailableError", "UnknownSolverError",
           "check_choice", "check_mask", "load_allocation", "load_instance", "save_allocation", "save_instance", "solve",
           "solve_allocation", "solver_names"]
