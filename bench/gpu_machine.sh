#!/usr/bin/env bash
# Runs on the lent GPU machine (see ../shared/GPU.md): no QGIS there, Python 3.12 with a
# CUDA torch and numpy 2. Installs the wheels that `make gpu-wheels` fetched into .whl/
# (GDAL's osgeo from gdal-wheel, open_clip and its two small needs), then runs the GPU tests
# and the one-process GPU suite. Carry .whl and .peer. Results land in $OUT when set.
#
#   bash bench/gpu_machine.sh                        # GPU tests, then the whole suite
#   bash bench/gpu_machine.sh --skip training peer   # suite options pass through
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/.build/gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# The QGIS-free tiers (QGIS is not on this machine); -m gpu picks their GPU tests.
python3 -m pytest -m gpu -p no:cacheprovider -q -o addopts="" \
    tests/core tests/training tests/engine \
    2>&1 | tee "$OUT/gpu_tests.log"
python3 bench/gpu_suite.py --out "$OUT/gpu_suite.json" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
