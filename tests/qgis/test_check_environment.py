"""*Check environment* (``mamol:checkenvironment``) and the idle-GPU warning as Processing
users meet them (issue 32): through ``processing.run`` and ``qgis_process``, with a faked
``nvidia-smi`` on PATH. No GPU is really there, so torch cannot use the listed one: a CPU
build says so (Debian 12 here), a CUDA build newer than the faked driver needs a newer
driver (Debian 13's PyPI torch, CUDA 13.0)."""
import json
import os
import shutil

import pytest
from qgis.core import Qgis, QgsProcessingException

from qgis_session import qgis_process, recording_feedback
from support import fake_nvidia_smi, idle_gpu_words

pytestmark = pytest.mark.subprocess   # every test starts the engine


@pytest.fixture
def fake_gpu(tmp_path, monkeypatch):
    """A faked ``nvidia-smi`` first on this process's PATH (the engine inherits it)."""
    if os.name == "nt":
        pytest.skip("a shell script stands in for nvidia-smi")
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path / "bin"))


@pytest.mark.platform   # on Debian 13's QGIS too
def test_check_environment_reports_both_sides_and_what_to_do(mamol_provider, fake_gpu,
                                                            tmp_path):
    import processing
    feedback = recording_feedback()
    result = processing.run("mamol:checkenvironment", {
        "PROBE_SECONDS": 0, "OUTPUT_JSON": str(tmp_path / "report.json")}, feedback=feedback)
    report = result["REPORT"].splitlines()
    assert report[0].startswith("MaMOL 0.") and f"on QGIS {Qgis.version()}" in report[0]
    assert report[2].startswith(f"Engine Python: {os.environ['MAMOL_PYTHON']}, chosen by "
                                "the environment variable MAMOL_PYTHON")
    assert "NVIDIA GPUs (nvidia-smi): NVIDIA H200 (driver 570.86.15, 140 GiB)" in \
        "\n".join(report)
    facts = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    words = idle_gpu_words(facts["gpu"]["torch_build"])   # Debian 13's torch is CUDA 13.0
    advice = report[report.index("What to do:") + 1]
    assert advice.startswith("  - An NVIDIA GPU is present") and words in advice
    assert any(words in warning for warning in feedback.warnings)
    assert all(line in feedback.info for line in report)   # the log holds the whole report
    assert facts["qgis"]["qgis_version"] == Qgis.version() and facts["report"] == report


def test_without_an_engine_the_report_says_how_to_set_it_up(mamol_provider, fake_gpu,
                                                           monkeypatch, tmp_path):
    import processing
    monkeypatch.delenv("MAMOL_PYTHON")
    result = processing.run("mamol:checkenvironment", {"PROBE_SECONDS": 0})
    report = result["REPORT"].splitlines()
    assert report[2].startswith("Engine Python: none (PyTorch is not set up for MaMOL yet")
    assert report[-1].startswith("  - PyTorch is not set up yet, and an NVIDIA GPU is "
                                 "present (NVIDIA H200 (driver 570.86.15)): run 'Install "
                                 "dependencies'")
    assert report[-1].endswith("with Build = CUDA.")


def test_an_idle_gpu_is_a_processing_warning_or_stops_a_cuda_run(mamol_provider, fake_gpu,
                                                                 tiny_model, small_scene,
                                                                 tmp_path):
    import processing
    feedback = recording_feedback()
    processing.run("mamol:classify", {
        "MODEL": str(tiny_model), "HS": str(small_scene.hs), "STRIDE": 8,
        "OUTPUT": str(tmp_path / "auto.tif")}, feedback=feedback)
    idle = [text for text in feedback.warnings if "NVIDIA H200" in text]
    assert len(idle) == 1 and "goes on on the CPU" in idle[0]
    with pytest.raises(QgsProcessingException, match="An NVIDIA GPU is present"):
        processing.run("mamol:classify", {
            "MODEL": str(tiny_model), "HS": str(small_scene.hs), "DEVICE": "cuda",
            "OUTPUT": str(tmp_path / "cuda.tif")}, feedback=recording_feedback())
    assert not (tmp_path / "cuda.tif").exists()


@pytest.mark.platform
@pytest.mark.skipif(shutil.which("qgis_process.bin") is None,
                    reason="qgis_process.bin is not installed")
def test_check_environment_through_qgis_process(qgis_env, tmp_path):
    done = qgis_process(qgis_env, "--json", "run", "mamol:checkenvironment", "--",
                        "PROBE_SECONDS=0", f"OUTPUT_JSON={tmp_path / 'facts.json'}")
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout)["results"]
    assert "What to do:" in results["REPORT"]
    assert results["OUTPUT_JSON"] == str(tmp_path / "facts.json")
    assert json.loads((tmp_path / "facts.json").read_text())["report"] == \
        results["REPORT"].splitlines()
