"""Exception hierarchy: one root, subclasses that also inherit the matching builtin.

Every message names the offending field and says what was expected and what came,
so the CLI can print it as one line and exit with code 2.
"""
from __future__ import annotations


class FalconError(Exception):
    """Root of every error raised on purpose by falcon-milp."""


class InvalidInstanceError(FalconError, ValueError):
    """An instance (or the arrays given to build one) breaks a rule of the format."""


class InstanceFileError(FalconError, ValueError):
    """An instance file is missing, truncated, corrupt or of an unknown schema."""


class OutputPathError(FalconError, ValueError):
    """An output path that cannot be written (missing directory, not writable, a directory)."""


class UnknownSolverError(FalconError, ValueError):
    """A solver name that is not registered."""


class OptionError(FalconError, ValueError):
    """An option out of its domain (a fraction, a count, a choice, ...): see
    :mod:`falcon_milp.validation`. The PyTorch bridge raises it as is."""


class SolverOptionError(OptionError):
    """A solver option (time limit, gap, threads, backend, ...) out of range."""


class SolverRegistrationError(FalconError, ValueError):
    """A solver cannot be registered (name taken, bad target or flags)."""


class SolverUnavailableError(FalconError, RuntimeError):
    """A solver cannot take this instance (too large, missing dependency)."""


class CertificateError(FalconError, RuntimeError):
    """A solver produced an inconsistent certificate (a bound below the mask's own objective):
    an internal error, raised instead of returning a result that could lie."""
