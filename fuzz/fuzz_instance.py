"""Coverage-guided fuzzing (atheris) of the instance loader and the CLI's ``info`` / ``solve``.

    make fuzz                                   # 600 s, corpus fuzz/corpus (seeded with instances/tiny)
    .venv/bin/python fuzz/fuzz_instance.py fuzz/corpus -max_total_time=60

Contract checked on every input: ``load_instance`` returns an instance or raises a
:class:`falcon_milp.exceptions.FalconError` (one-line message); ``falcon-milp info`` and
``solve --solver fast`` return 0 or 2 and never raise. Anything else is a finding (atheris
stops and writes the input as ``crash-*``).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from falcon_milp import load_instance
    from falcon_milp.cli import main
    from falcon_milp.exceptions import FalconError

_DIR = tempfile.mkdtemp(prefix="falcon-fuzz-")
_PATH = os.path.join(_DIR, "x.npz")


def one_input(data: bytes) -> None:
    with open(_PATH, "wb") as fh:
        fh.write(data)
    try:
        inst = load_instance(_PATH)
    except FalconError as exc:
        assert "\n" not in str(exc), f"multi-line message: {exc!r}"
        inst = None
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        rc = main(["info", _PATH])
        assert rc in (0, 2), f"info exit code {rc}"
        if inst is not None and inst.n_weights <= 100_000:
            rc = main(["solve", _PATH, "--solver", "fast"])
            assert rc in (0, 2), f"solve exit code {rc}"


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
