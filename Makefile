# Two commands set everything up on a fresh machine (see README):
#   make dqn    # installs into .venv if needed, then trains DQN with Alrao on Pendulum-v1
#   make test   # installs into .venv if needed, then runs the test suite (slow tests excluded)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dqn test test-slow lint bench results

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch first (an unpinned torch would pull a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

dqn: $(VENV)/.installed
	$(BIN)/python scripts/run_dqn.py --env Pendulum-v1 --alrao

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n 2

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

lint: $(VENV)/.installed
	$(BIN)/ruff check .

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_step.py
	$(BIN)/python benchmarks/bench_population.py
	$(BIN)/python benchmarks/bench_dqn.py

# the paper's suite (10 seeds, 4 envs; hours on 2 cores, resumable): docs/results/summary.md
results: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[peers]"
	$(BIN)/python scripts/compare.py --suite paper --out docs/results
