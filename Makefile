# Two commands: `make demo` trains and evaluates GLIF on the offline default dataset; `make test`
# runs the test suite. Both create their own virtual environment in .venv on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch that the checkpoint-interop tests and the benchmarks compare against.
TORCH ?= torch==2.13.0
WORKDIR ?= runs/digits

.PHONY: demo test test-fast lint bench docs faults clean

demo: $(VENV)/.demo
	$(BIN)/python -m experiments.main --config=experiments/configs/digits.py --workdir=$(WORKDIR)

# Work stealing: an idle worker takes tests queued on the other, so the long compiles do not
# leave one worker waiting at the end.
test: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 --dist worksteal --durations=15

# The edit loop: everything but the tests marked slow (whole runs, subprocesses, notebooks,
# full-size compiles).
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -n 2 --dist worksteal -m "not slow" --durations=10

lint: $(VENV)/.test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# On a CPU: the GPU-sized training grid shrunk to what a CPU runs in minutes.
bench: $(VENV)/.test
	$(BIN)/python -m experiments.benchmarks --train-batch 8 --train-dtypes float32 --train-torch eager

# The documentation with the API reference, into docs/_build/html; any warning is an error.
docs: $(VENV)/.test
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

# Kill a short training run at random moments, many times, and check that no state is lost.
faults: $(VENV)/.test
	$(BIN)/python -m tests.support.faults --trials 10

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[experiments]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[experiments,notebooks,torch,dev,tpu]'
	touch $@ $(VENV)/.demo

clean:
	rm -rf $(VENV) runs docs/_build
