# Two commands on a fresh machine (README.md): `make demo` runs the main job on the
# bundled defaults, `make test` runs the tests. Both create .venv as needed and
# rebuild the C++ extension when its sources change.
PYTHON ?= python3
VENV ?= .venv
# This machine kind keeps a CPU build of torch 2.13.0 on disk for pip to take.
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lddm-installed
BUILD_INPUTS := setup.py pyproject.toml CMakeLists.txt $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test bench install

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) $(BUILD_INPUTS)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet setuptools wheel cmake ninja
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test,gpu]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lddm-fast info
	$(PY) benchmarks/run.py --suite kernels --device cpu --quick

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py --suite all --out bench.json
