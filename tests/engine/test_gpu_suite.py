"""The GPU benchmark suite (bench/gpu_suite.py) runs every row but the peer on the CPU, so
the script a GPU session relies on cannot rot unnoticed where CI has no GPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess   # every test starts a child process

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_smoke_run_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--device", "cpu",
         "--arch", "mamol-tiny-vit", "--patch-size", "5", "--sizes", "128",
         "--train-scene", "128", "--train-samples-per-class", "10", "--train-epochs", "2",
         "--seconds", "0.2", "--out", str(out)],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {(r["row"], r["unit"]): r for r in json.loads(out.read_text())}
    for key in [("fp32 matmul", "TFLOP/s"), ("backbone alone (SDPA)", "sequences/s"),
                ("encoder (embedding + adapters)", "passes/s"),
                ("classify 128², hs+sar+lidar", "px/s"), ("classify 128², hs+lidar", "px/s"),
                ("classify 128², hs+lidar", "encoder passes/s"),
                ("training, steady (after epoch 1)", "samples/s")]:
        assert rows[key]["value"] > 0, key
    peer = rows[("naive peer (fp32, CPU-cut windows)", "px/s")]
    assert peer["value"] is None and "CUDA" in peer["note"]
    assert "| classify 128², hs+sar+lidar |" in done.stdout
