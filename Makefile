# make install: ./.venv with busi (editable) and the test tools
# make demo:    synthetic data + a complete training run in runs/demo
# make test:    the test suite, on two workers (pytest-xdist)
# make test-fast: the tests not marked slow (no training runs, Slurm, Horovod or installs)
# make horovod: build Horovod (patched 0.28.1, Gloo; MPI too if mpicxx exists) into the venv
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# Two pytest-xdist workers, one test module at a time each (module fixtures are built once).
TEST_WORKERS ?= 2
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadscope

.PHONY: install demo test test-fast horovod clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

data/demo/.complete: | install
	rm -rf data/demo
	$(BIN)/busi-job synth data/demo --per-class 60 --size 64 --seed 0
	touch $@

demo: install data/demo/.complete
	$(BIN)/busi-job train job/demo.yaml --restart

horovod: install
	PYTHON=$(BIN)/python scripts/build_horovod.sh

test: install
	$(BIN)/python -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf runs/demo data/demo
