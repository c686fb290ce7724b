# MaMOL for QGIS — every set-up step, readable top to bottom.
#
#   make demo      set up everything, then run the main job on the built-in sample scene
#   make test      set up everything, then run the whole test suite (every tier)
#   make test-core the pure tiers only (tests/core, tests/training: no QGIS), the inner loop
#   make package   build dist/mamol-<version>.zip for QGIS's "Install from ZIP" (any OS)
#   make test-pip  pip install the engine (no QGIS) in a bare Debian 13 root and run it
#   make gpu-wheels  fetch what the bare GPU machine lacks into .whl/ and .peer/ (ignored)
#
# Each target installs only what is missing, so running it again is cheap.

SHELL := /bin/bash
ROOT := $(CURDIR)
BUILD := $(ROOT)/.build
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
SITE_PACKAGES = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PLUGINS_DIR := $(BUILD)/plugins
PROFILE_DIR := $(BUILD)/qgis-profile
DEMO_DIR := $(BUILD)/demo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Headless QGIS, an isolated profile, our plugin folder, the venv's packages for the Python
# embedded in qgis_process (it is Debian's python3, the venv's base interpreter), and the
# venv as the model environment the algorithms run the engine (python -m mamol) in.
# Where PyTorch shares a process with QGIS (the test suite's own process; the model ran in
# QGIS until the engine), Debian's OpenBLAS threads and busy-waiting OpenMP threads compete
# with PyTorch's for the cores: without these two settings the model ran 2-3x slower there.
QGIS_ENV = QT_QPA_PLATFORM=offscreen XDG_RUNTIME_DIR=$(BUILD)/xdg-runtime \
	OPENBLAS_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE \
	QGIS_CUSTOM_CONFIG_PATH=$(PROFILE_DIR) QGIS_PLUGINPATH=$(PLUGINS_DIR) \
	PYTHONPATH=$(SITE_PACKAGES) MAMOL_PYTHON=$(PY)
# Debian's /usr/bin/qgis_process wrapper is broken (qgis/QGIS#57683): call the binary.
QGIS_PROCESS = $(QGIS_ENV) qgis_process.bin

.PHONY: demo test test-fast test-core test-core-installed test-platform test-debian13 test-pip \
	test-debian-sid bench-host package setup clean gpu-wheels

# ---- 1. Debian packages: QGIS 3.22 with its Python bindings, GDAL, venv support.
QGIS_STAMP := $(BUILD)/.qgis-installed
$(QGIS_STAMP):
	@mkdir -p $(BUILD)
	@if ! command -v qgis_process.bin >/dev/null \
	    || ! /usr/bin/python3 -c 'import qgis.core, osgeo.gdal, jinja2, matplotlib' 2>/dev/null \
	    || ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then \
	  echo ">> installing QGIS and GDAL from Debian packages"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    qgis python3-qgis gdal-bin python3-gdal python3-venv python3-jinja2 \
	    python3-matplotlib; \
	fi
	@touch $@

# ---- 2. The venv: Debian's python3 with system site-packages, plus pinned requirements.
# NumPy is pinned to the system's own version: Debian's osgeo and QGIS are built against it
# (1.24 on Debian 12, 2.2 on Debian 13), so the venv must never bring another one.
# torch 2.13.0 is a local CPU wheel on Debian 12's Python 3.11; on Python 3.13 (Debian 13)
# pip takes PyPI's CUDA build (about 4.7 GB), which runs on a CPU as well.
VENV_STAMP := $(VENV)/.installed
$(VENV_STAMP): requirements.txt $(QGIS_STAMP)
	@echo ">> creating the venv in $(VENV)"
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q torch==2.13.0
	@$(PY) -m pip install -q -r requirements.txt \
	  "numpy==$$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')"
	@touch $@

# ---- 3. The plugin linked as 'mamol' and enabled in an isolated QGIS profile.
PROFILE_STAMP := $(PROFILE_DIR)/.enabled
$(PROFILE_STAMP): $(VENV_STAMP) metadata.txt
	@mkdir -p $(PLUGINS_DIR) $(PROFILE_DIR) $(BUILD)/xdg-runtime
	@chmod 700 $(BUILD)/xdg-runtime
	@ln -sfn $(ROOT) $(PLUGINS_DIR)/mamol
	@out=$$($(QGIS_PROCESS) plugins enable mamol 2>&1) || grep -q "already enabled" <<<"$$out" \
	  || { echo "$$out"; exit 1; }
	@touch $@

setup: $(PROFILE_STAMP)

# ---- Main job: sample scene -> train (tiny backbone, CPU-friendly) -> classify -> accuracy,
# all through qgis_process; then OA/kappa against the reference labels and a PNG quick-look.
DEMO_TRAIN = BACKBONE=mamol-tiny-vit WEIGHTS=2 PATCH_SIZE=7 EPOCHS=8 MAX_SAMPLES_PER_CLASS=300 \
	MISSING_MODE=1 MISSING_RATE=0.5 DEVICE=auto SEED=0
demo: setup
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	$(QGIS_PROCESS) run mamol:createsamplescene -- SIZE=256 SEED=42 OUTPUT_FOLDER=$(DEMO_DIR)
	$(QGIS_PROCESS) run mamol:trainmodel -- HS=$(DEMO_DIR)/hs.tif SAR=$(DEMO_DIR)/sar.tif \
	  LIDAR=$(DEMO_DIR)/lidar.tif POLYGONS=$(DEMO_DIR)/training_polygons.gpkg \
	  CLASS_FIELD=class_id CLASS_NAME_FIELD=class_name $(DEMO_TRAIN) \
	  OUTPUT_MODEL=$(DEMO_DIR)/model.mamol OUTPUT_REPORT=$(DEMO_DIR)/training_report.html
	$(QGIS_PROCESS) run mamol:classify -- MODEL=$(DEMO_DIR)/model.mamol HS=$(DEMO_DIR)/hs.tif \
	  SAR=$(DEMO_DIR)/sar.tif LIDAR=$(DEMO_DIR)/lidar.tif DEVICE=auto \
	  OUTPUT=$(DEMO_DIR)/land_cover.tif OUTPUT_CONFIDENCE=$(DEMO_DIR)/confidence.tif \
	  OUTPUT_MODALITIES=$(DEMO_DIR)/modalities_used.tif
	@echo ">> accuracy against the reference labels (never used in training):"
	@PYTHONPATH=$(PLUGINS_DIR) $(PY) -m mamol.core.assessment --classes $(DEMO_DIR)/land_cover.tif \
	  --reference $(DEMO_DIR)/reference_labels.tif --modalities $(DEMO_DIR)/modalities_used.tif \
	  --json $(DEMO_DIR)/accuracy.json --quicklook $(DEMO_DIR)/land_cover.png
	@echo ">> results in $(DEMO_DIR): land_cover.tif (+ .qml legend), land_cover.png, model.mamol, training_report.html"

# ---- Tests, in tiers that match the rooms (tests/README.md says which runs where and why):
# tests/core and tests/training are pure (no QGIS), tests/engine starts `python -m mamol`
# and torchrun, tests/qgis goes through QGIS, tests/install builds and installs.
# PYTEST_ARGS narrows a run (e.g. PYTEST_ARGS=tests/core/test_report.py); empty = the tiers.
# Two pytest-xdist workers, one torch thread each, a test module to a worker (its module
# fixtures are made once); tests/README.md has the measurements. WORKERS=0 runs in one
# process (e.g. for -s or a debugger).
PURE_TIERS := tests/core tests/training
WORKERS ?= 2
XDIST = -n $(WORKERS) --dist loadfile
test: setup
	$(QGIS_ENV) $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup
	$(QGIS_ENV) $(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

test-core: $(VENV_STAMP)
	$(PY) -m pytest $(XDIST) $(PURE_TIERS) $(PYTEST_ARGS)

# The pure tiers against a pip-installed engine, no set-up: PY= that venv's python
# (.ci/pip-root runs it in a root with neither QGIS nor Debian's GDAL).
test-core-installed:
	MAMOL_TEST_INSTALLED=1 $(PY) -m pytest -p no:cacheprovider $(XDIST) $(PURE_TIERS) $(PYTEST_ARGS)

# What Debian 13 runs (.ci/debian13 test-platform): the tests marked `platform`.
test-platform: setup
	$(QGIS_ENV) $(PY) -m pytest $(XDIST) -m platform $(PYTEST_ARGS)

# ---- Training throughput of one run in plain Python and inside qgis_process (see
# bench/bench_host.py); `.ci/debian13 bench-host` measures it on Debian 13.
bench-host: setup
	$(QGIS_ENV) $(PY) bench/bench_host.py

# ---- The platform tests on Debian 13 (QGIS 3.40 LTR, GDAL 3.10, Python 3.13, NumPy 2), in
# a root made with debootstrap and kept in ~/.cache/mamol/debian13 (needs root or sudo);
# `.ci/debian13 test` runs every tier there.
test-debian13:
	.ci/debian13 test-platform

# ---- The same on Debian sid (unstable: QGIS 3.44, GDAL 3.13, Python 3.14, NumPy 2.4 at the
# end of 2026), in ~/.cache/mamol/debian-sid: what the next Debian will bring, checked by
# hand before a release, not in .ci/run; `.ci/debian-sid test` runs every tier there.
test-debian-sid:
	.ci/debian-sid test-platform

# ---- The engine without QGIS: a fresh venv, `pip install ".[gdal]"` (pyproject.toml), then
# mamol scene -> train -> classify, in a bare Debian 13 root (Python 3.13, no QGIS, no
# python3-gdal) kept in ~/.cache/mamol/debian13-bare (needs root or sudo).
test-pip:
	.ci/pip-root

# ---- A zip for QGIS's "Install from ZIP" and plugins.qgis.org: top folder mamol/, no tests
# or dev files, checked against the plugin repository's rules. Needs only Python 3.9+ (any
# OS; on Windows without make: `python packaging/build_zip.py`).
PYTHON3 ?= python3
package:
	$(PYTHON3) packaging/build_zip.py

# ---- For the lent GPU machine (no QGIS, Python 3.12, no network): the wheels it lacks and
# the peer script, in ignored folders that the device tool carries; bench/gpu_machine.sh
# installs them there and runs the GPU tests and bench/gpu_suite.py.
GPU_WHEELS := gdal-wheel==3.13.3 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
gpu-wheels:
	@mkdir -p .whl .peer
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
	  --platform manylinux_2_17_x86_64 -d .whl $(GPU_WHEELS)
	install -m 644 ../shared/bench/naive_peer.py .peer/naive_peer.py

clean:
	rm -rf $(BUILD) dist
