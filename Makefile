# uv is installed with pip when it is missing; everything else comes from uv.lock.
UV = $(shell command -v uv 2>/dev/null || echo python3 -m uv)

.PHONY: uv setup setup-all demo test test-fast bench lint clean

uv:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv

setup: uv  ## the core: CSV logging, no optional extras
	$(UV) sync --frozen

# the tests also cover the optional extras: wandb, tensorboard, slurm, optuna
setup-all: uv
	$(UV) sync --frozen --all-extras

demo: setup  ## install, then the main job on the embedded default data (sklearn digits)
	$(UV) run hpmkd train +strategy=kd

# one thread per process: the suite's small models and two-process DDP runs are faster so on few cores
test: setup-all  ## the whole test suite (skips tests that need ../shared/data when it is absent)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(UV) run pytest -q

test-fast: setup-all
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(UV) run pytest -q -m "not slow"

bench: setup
	$(UV) run python scripts/bench_loop.py

lint: setup
	$(UV) run ruff check hpmkd tests scripts

clean:
	rm -rf outputs multirun .pytest_cache
