"""``python -m mamol doctor`` and the idle-GPU check before a run (issue 32), with a faked
``nvidia-smi`` on PATH: no GPU is really there, so "a driver lists a GPU but torch cannot
use it" is real once a script answers as ``nvidia-smi`` (a CPU build on Debian 12, PyPI's
CUDA 13.0 build with a driver for CUDA 12.8 on Debian 13). A usable CUDA is
faked in tests/core/test_system.py, where the advice is a pure function."""
import json
import os
import subprocess
import sys

import pytest

from support import fake_nvidia_smi, idle_gpu_words
from test_engine import ENV, events

pytestmark = pytest.mark.subprocess   # every test starts a child process

def engine(*arguments, env=ENV):
    return subprocess.run([sys.executable, "-m", "mamol", *map(str, arguments)],
                          capture_output=True, text=True, env=env, timeout=600)


def with_fake_gpu(folder):
    """The engine's environment with a faked ``nvidia-smi`` first on PATH."""
    return dict(ENV, PATH=fake_nvidia_smi(folder))


def doctor_facts(env, *arguments):
    done = engine("doctor", "--probe-seconds", 0, "--progress", "json", *arguments, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), events(done.stderr)


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for nvidia-smi")
@pytest.mark.platform   # the report on Debian 13 too
def test_doctor_without_a_driver_and_with_a_driver_but_cpu_torch(tmp_path):
    empty = dict(ENV, PATH=os.pathsep.join(
        [str(tmp_path / "none"), os.path.dirname(sys.executable), "/usr/bin", "/bin"]))
    if any(os.access(os.path.join(p, "nvidia-smi"), os.X_OK) for p in ("/usr/bin", "/bin")):
        pytest.skip("this machine has a real nvidia-smi")
    facts, _ = doctor_facts(empty)
    assert facts["gpu"]["nvidia_smi"] == [] and facts["device"]["chosen"] == "cpu"
    assert facts["advice"][0].startswith("No GPU was found")
    assert facts["packages"]["torch"] and facts["packages"]["GDAL"][0].isdigit()
    assert facts["report"][-len(facts["advice"]):] == [f"  - {a}" for a in facts["advice"]]
    asked, _ = doctor_facts(empty, "--device", "cuda")   # reported, not a failure
    assert asked["device"]["chosen"] is None and "probe" not in asked
    assert asked["advice"][0].startswith("Device 'cuda' was asked for, but PyTorch sees no "
                                         "CUDA GPU here.")

    facts, lines = doctor_facts(with_fake_gpu(tmp_path / "bin"))
    assert facts["gpu"]["nvidia_smi"] == [{"name": "NVIDIA H200", "driver_version":
                                           "570.86.15", "memory_mib": 143771}]
    assert facts["gpu"]["driver_cuda"] == "12.8"
    words = idle_gpu_words(facts["gpu"]["torch_build"])   # Debian 13's torch is CUDA 13.0
    assert facts["advice"][0].startswith("An NVIDIA GPU is present (NVIDIA H200 (driver "
                                         "570.86.15))") and words in facts["advice"][0]
    assert any(e["event"] == "warning" and words in e["text"] for e in lines)
    assert "NVIDIA H200 (driver 570.86.15, 140 GiB); the driver supports CUDA up to 12.8" \
        in "\n".join(facts["report"])


def test_doctor_report_on_a_terminal_and_its_json_file(tmp_path):
    """Plain output is the report itself; ``--json`` writes the facts whole."""
    done = engine("doctor", "--probe-seconds", 0.5, "--json", tmp_path / "facts.json",
                  "--device", "cpu")
    assert done.returncode == 0, done.stderr
    report = done.stdout.splitlines()
    assert report[0].startswith("Engine Python: ")
    assert "What to do:" in report
    assert any("a 1,000 × 1,000 three-modality scene takes about" in line for line in report)
    facts = json.loads((tmp_path / "facts.json").read_text(encoding="utf-8"))
    assert facts["report"] == report
    assert [probe["arch"] for probe in facts["probe"]] == ["mamol-tiny-vit", "ViT-B-16"]
    assert all(probe["windows_per_second"] > 0 for probe in facts["probe"])


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for nvidia-smi")
def test_an_idle_gpu_is_a_warning_with_auto_and_an_error_with_cuda(tiny_model, small_scene,
                                                                    tmp_path):
    env = with_fake_gpu(tmp_path / "bin")
    auto = engine("classify", "--model", tiny_model, "--hs", small_scene.hs, "--stride", 8,
                  "--output", tmp_path / "auto.tif", "--progress", "json", env=env)
    assert auto.returncode == 0, auto.stderr
    warnings = [e["text"] for e in events(auto.stderr) if e["event"] == "warning"]
    assert any("An NVIDIA GPU is present (NVIDIA H200 (driver 570.86.15))" in text
               and "goes on on the CPU" in text for text in warnings), warnings
    cuda = engine("classify", "--model", tiny_model, "--hs", small_scene.hs, "--device",
                  "cuda", "--output", tmp_path / "cuda.tif", "--progress", "json", env=env)
    assert cuda.returncode == 2
    error = [e for e in events(cuda.stderr) if e["event"] == "error"]
    assert error[0]["kind"] == "input"
    assert error[0]["message"].startswith("An NVIDIA GPU is present")
    assert not any(e["event"] == "progress" for e in events(cuda.stderr))
    assert not (tmp_path / "cuda.tif").exists()
    # without a driver nothing is said
    quiet = engine("classify", "--model", tiny_model, "--hs", small_scene.hs, "--stride", 8,
                   "--output", tmp_path / "quiet.tif", "--progress", "json",
                   env=dict(ENV, PATH=os.pathsep.join([os.path.dirname(sys.executable),
                                                       "/usr/bin", "/bin"])))
    assert quiet.returncode == 0
    assert not [e for e in events(quiet.stderr) if e["event"] == "warning"
                and "NVIDIA" in e["text"]]


@pytest.mark.skipif(os.name == "nt", reason="a shell script stands in for nvidia-smi")
@pytest.mark.parametrize("command", [
    ["train", "--polygons", "p.gpkg", "--class-field", "c", "--output", "m.mamol"],
    ["evaluate", "--model", "m.mamol", "--labels", "r.tif", "--report", "e.html"]])
def test_train_and_evaluate_stop_before_any_work_on_an_idle_gpu(command, tmp_path):
    done = engine(*command, "--hs", tmp_path / "hs.tif", "--device", "cuda:0", "--progress",
                  "json", env=with_fake_gpu(tmp_path / "bin"))
    assert done.returncode == 2
    error = [e for e in events(done.stderr) if e["event"] == "error"]
    assert error[0]["message"].startswith("An NVIDIA GPU is present"), done.stderr
