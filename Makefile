# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean bench-scaling fuzz mutate

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 first: a CPU build on this machine's disk; then `torch>=2.2` installs nothing more.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[torch,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/falcon-milp bench --suite quick --out bench-out/quick

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

FUZZ_SECONDS ?= 600
# coverage-guided fuzzing of load_instance and the CLI's info/solve (atheris); findings -> fuzz/findings/
fuzz: $(STAMP)
	$(PY) -m pip install -q atheris
	$(PY) fuzz/fuzz_instance.py fuzz/corpus -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -artifact_prefix=fuzz/findings/

# mutation testing of the certificate code ([tool.mutmut] in pyproject.toml); results: mutmut results
mutate: $(STAMP)
	$(PY) -m pip install -q mutmut
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) bench-out
