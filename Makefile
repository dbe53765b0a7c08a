# make install    ./.venv with busi (editable), the test tools and the docs tools
# make demo       synthetic data + a complete training run in runs/demo
# make test       the whole test suite (unit, integration and system tiers), on three workers
# make test-fast  the unit tier only (no subprocess, no training): under a minute on 2 cores (2 when other work shares them)
# make docs       the manual as a site in docs/_build/html (Sphinx + MyST; warnings are errors)
# make horovod    build Horovod (patched 0.28.1, Gloo; MPI too if mpicxx exists) into the venv
# make image      the CPU container image (docker or podman, whichever is installed)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# pytest-xdist workers, one test module at a time each (module fixtures are built once), the
# modules in tests/conftest.py's LONGEST_FIRST order (xdist would order them by their number of
# tests). Three on two cores: the tests wait on subprocesses, Slurm and signals, and a third
# worker fills those waits (docs/testing.md: 598 s against 646 s with two, the same machine and hour).
TEST_WORKERS ?= 3
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder

.PHONY: install demo test test-fast docs horovod image clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[test,docs]'
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
	$(BIN)/python -m pytest $(PYTEST_XDIST) -m unit $(PYTEST_ARGS)

docs: install
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"

image:
	containers/build-image.sh

clean:
	rm -rf runs/demo data/demo docs/_build docs/reference
