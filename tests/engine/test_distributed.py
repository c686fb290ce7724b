"""The engine under torchrun (issue 18, DESIGN §6), on CPU processes with gloo: DDP training
gives the tensors one process gives, sharded classification gives the same bits, and a rank
that fails — cannot read its input, has no block, dies mid-run — fails every rank with a
message and a non-zero status, leaving no output and no part file.

Every run here has a time limit; a run that exceeds it is killed with its whole process
group, so a hung collective fails the test instead of hanging CI. Each rank runs one torch
thread (``MAMOL_THREADS_PER_RANK=1``) and the one-process references too, so the comparison
is about sharding alone.
"""
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support import PLUGINS_DIR

LIMIT_S = 900   # per launch (slow, shared CI machines); a hang is killed (process group) and fails the test
ENV = dict(os.environ, PYTHONPATH=str(PLUGINS_DIR), OMP_NUM_THREADS="1",
           MAMOL_THREADS_PER_RANK="1", MAMOL_DIST_TIMEOUT="180")
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
              "MASTER_PORT", "MAMOL_TEST_FAULT"):
    ENV.pop(_name, None)
BATCH = 15          # a global batch that 2 ranks share unevenly (8 + 7)
RANKS = 2


def _host_name_resolves() -> None:
    """torch's rendezvous and gloo find this machine by its host name; where it does not
    resolve (a bare chroot without the host's /etc/hosts) the launch retries until killed,
    so say so at once instead of after LIMIT_S."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, None)
    except socket.gaierror as exc:
        pytest.fail(f"this machine's host name '{name}' does not resolve ({exc}); torchrun "
                    "needs it: add it to /etc/hosts")


def _run(command, env, limit=LIMIT_S):
    """Run ``command`` in its own session; kill the session when it overruns."""
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    try:
        out, err = child.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail(f"{' '.join(map(str, command[:6]))} … ran past {limit} s (killed)")
    return subprocess.CompletedProcess(command, child.returncode, out, err)


def engine(*arguments, **env):
    """``python -m mamol …`` in one process."""
    return _run([sys.executable, "-m", "mamol", *map(str, arguments)], dict(ENV, **env))


def torchrun(*arguments, ranks=RANKS, **env):
    """``torchrun --standalone --nproc-per-node N -m mamol …``."""
    _host_name_resolves()
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc-per-node", str(ranks), "-m", "mamol", *map(str, arguments)],
                dict(ENV, **env))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ranks_by_hand(*arguments, ranks=RANKS, **env):
    """The N processes torchrun would start, started here, so that each rank's own exit
    status and stderr can be checked (torchrun's agent stops the others once one exits)."""
    _host_name_resolves()
    port = _free_port()
    children = []
    for rank in range(ranks):
        rank_env = dict(ENV, RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank),
                        LOCAL_WORLD_SIZE=str(ranks), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=str(port), **env)
        children.append(subprocess.Popen(
            [sys.executable, "-m", "mamol", *map(str, arguments)], env=rank_env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True))
    results = []
    try:
        for child in children:
            out, err = child.communicate(timeout=LIMIT_S)
            results.append(subprocess.CompletedProcess(arguments, child.returncode, out, err))
    except subprocess.TimeoutExpired:
        pytest.fail(f"a rank ran past {LIMIT_S} s (killed)")
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.communicate()
    return results


def _result(stdout: str) -> dict:
    """The engine's result as printed on stdout without ``--progress json``: one
    ``key: <JSON value>`` line per field (rank 0 alone prints it)."""
    fields = {}
    for line in stdout.splitlines():
        key, _, value = line.partition(": ")
        assert key not in fields, f"result printed twice: {stdout!r}"
        fields[key] = json.loads(value)
    return fields


def _errors(stderr: str):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def _tensors(path: Path):
    from safetensors.numpy import load_file
    return load_file(str(path))


def _training_arguments(scene, kind: str):
    return ["--hs", scene.hs, "--sar", scene.sar, "--lidar", scene.lidar,
            "--polygons", scene.training_polygons, "--class-field", "class_id",
            "--arch", "mamol-tiny-vit", "--weights", "random", "--patch-size", 5,
            "--epochs", 2, "--batch-size", BATCH, "--max-train-per-class", 20,
            "--max-validation-per-class", 5, "--missing-rate", 0.5, "--device", "cpu",
            "--model-kind", kind, "--progress", "none"]


@pytest.fixture(scope="module", params=["pixel", "tile"])
def trained(request, small_scene, tmp_path_factory):
    """The same training in one process and in 2 ranks: (one-process model, 2-rank model,
    2-rank run)."""
    kind = request.param
    folder = tmp_path_factory.mktemp(f"ddp-{kind}")
    arguments = _training_arguments(small_scene, kind)
    # One process with micro-batches the size of a rank's share (ceil(15 / 2) = 8) sums
    # the same gradients in the same order as 2 ranks; the whole batch in one pass differs
    # by float rounding, which Adam's first steps magnify on near-zero gradients.
    single = engine("train", *arguments, "--micro-batch-size", 8,
                    "--output", folder / "one.mamol")
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = torchrun("train", *arguments, "--output", folder / "two.mamol",
                     "--report", folder / "two.html")
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    return folder / "one.mamol", folder / "two.mamol", ranks


@pytest.mark.subprocess
def test_ddp_training_gives_the_tensors_of_one_process(trained):
    one, two, run = trained
    a, b = _tensors(one), _tensors(two)
    assert a.keys() == b.keys() and len(a) > 10
    worst = max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)
    assert worst <= 1e-5, worst
    # rank 0 alone wrote the model and the report
    assert _result(run.stdout)["model"] == str(two)
    report = json.loads(two.with_suffix(".json").read_text())
    assert report["timing"]["processes"] == RANKS
    assert report["timing"]["backend"] == "gloo"
    assert sorted(p.name for p in two.parent.iterdir()) == ["one.mamol", "two.html",
                                                            "two.json", "two.mamol"]
    assert "Grad strides do not match" not in run.stderr   # see distributed_forward


CLASSIFY_OUTPUTS = (("--output", "classes.tif"), ("--probabilities", "probabilities.tif"),
                    ("--confidence", "confidence.tif"), ("--entropy", "entropy.tif"),
                    ("--modalities-used", "modalities.tif"))


def _classify_arguments(scene, model, folder: Path, *extra):
    arguments = ["classify", "--model", model, "--hs", scene.hs, "--sar", scene.sar,
                 "--device", "cpu", "--block-size", 48, "--progress", "none", *extra]
    for option, name in CLASSIFY_OUTPUTS:
        arguments += [option, folder / name]
    return arguments


def _raster(path: Path):
    from osgeo import gdal
    dataset = gdal.Open(str(path))
    band = dataset.GetRasterBand(1)
    table = band.GetRasterColorTable()
    return (dataset.ReadAsArray(), dataset.GetGeoTransform(), dataset.GetMetadata(),
            band.GetNoDataValue(),
            None if table is None else [table.GetColorEntry(i) for i in range(8)],
            dataset.GetMetadata("IMAGE_STRUCTURE").get("LAYOUT"))


@pytest.mark.subprocess
def test_sharded_classification_is_bit_identical(trained, small_scene, tmp_path):
    """128 × 128 px in blocks of 48: 9 blocks, dealt 5 + 4 to 2 ranks."""
    _, model, _ = trained
    single = engine(*_classify_arguments(small_scene, model, tmp_path / "one"))
    assert single.returncode == 0, single.stderr[-3000:]
    ranks = torchrun(*_classify_arguments(small_scene, model, tmp_path / "two"))
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    for _, name in CLASSIFY_OUTPUTS:
        one, two = _raster(tmp_path / "one" / name), _raster(tmp_path / "two" / name)
        assert one[0].dtype == two[0].dtype and one[0].tobytes() == two[0].tobytes(), name
        assert one[1:] == two[1:], name
    classes = _raster(tmp_path / "two" / "classes.tif")[0]
    assert len(np.unique(classes)) > 2   # a real map, not a constant
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())
    assert _result(ranks.stdout)["class_counts"] == _result(single.stdout)["class_counts"]


def _cog_header(path: Path) -> bool:
    """Whether GDAL's COG driver wrote ``path``: its structural metadata right after the TIFF
    header (GDAL's "ghost area")."""
    return b"GDAL_STRUCTURAL_METADATA_SIZE=" in path.read_bytes()[:64]


@pytest.mark.subprocess
def test_cog_output_holds_the_same_pixels(tiny_model, small_scene, tmp_path):
    plain = engine(*_classify_arguments(small_scene, tiny_model, tmp_path / "tif"))
    cog = engine(*_classify_arguments(small_scene, tiny_model, tmp_path / "cog", "--cog"))
    assert plain.returncode == 0 and cog.returncode == 0, cog.stderr[-3000:]
    for option, name in CLASSIFY_OUTPUTS:
        a, b = _raster(tmp_path / "tif" / name), _raster(tmp_path / "cog" / name)
        assert a[0].tobytes() == b[0].tobytes(), name
        assert a[1:5] == b[1:5], name
        # GDAL >= 3.13 reports LAYOUT=COG for a plain file too where it happens to be laid out
        # as one (small, one tile): what --cog adds is the COG driver's header
        assert b[5] == "COG", name
        assert [_cog_header(tmp_path / folder / name) for folder in ("tif", "cog")] \
            == [False, True], name
    assert not [p for p in (tmp_path / "cog").iterdir() if p.name.startswith(".")]


def _no_output(folder: Path):
    return not folder.exists() or not list(folder.iterdir())


@pytest.mark.subprocess
def test_a_rank_that_cannot_read_an_input_stops_every_rank(tiny_model, small_scene, tmp_path):
    out = tmp_path / "out"
    results = ranks_by_hand(*_classify_arguments(small_scene, tiny_model, out),
                            MAMOL_TEST_FAULT="1:input")
    assert [r.returncode for r in results] == [2, 2], [r.stderr[-2000:] for r in results]
    for rank, result in enumerate(results):
        (line,) = _errors(result.stderr)
        assert line.startswith(f"error: rank {rank}: ")
        assert "Cannot read the HS raster" in line and "not-on-this-node" in line
    assert "rank 1 of 2 stopped the run" in results[0].stderr
    assert _no_output(out)


@pytest.mark.subprocess
def test_more_ranks_than_blocks_is_refused(tiny_model, small_scene, tmp_path):
    out = tmp_path / "out"
    arguments = _classify_arguments(small_scene, tiny_model, out)
    arguments[arguments.index("--block-size") + 1] = 128    # one block
    results = ranks_by_hand(*arguments)
    assert [r.returncode for r in results] == [2, 2]
    for result in results:
        assert "2 processes but the grid has only 1 block(s)" in result.stderr
    assert _no_output(out)


@pytest.mark.subprocess
def test_a_rank_dying_mid_classification_leaves_nothing(tiny_model, small_scene, tmp_path):
    out = tmp_path / "out"
    results = ranks_by_hand(*_classify_arguments(small_scene, tiny_model, out),
                            MAMOL_TEST_FAULT="1:block")
    assert all(r.returncode != 0 for r in results), [r.returncode for r in results]
    assert "test fault injected on rank 1" in results[1].stderr
    assert "rank 1 of 2 failed: test fault injected" in results[0].stderr
    assert _no_output(out)


@pytest.mark.subprocess
@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_rank_leaves_no_output_and_no_part_file(tiny_model, small_scene, tmp_path,
                                                          killed):
    """A rank killed outright (SIGKILL, as by the out-of-memory killer) after writing a block
    cannot clean up or tell anyone: the survivor notices at the next exchange, fails, and
    removes the staging folder with the killed rank's part files in it."""
    out = tmp_path / "out"
    results = ranks_by_hand(*_classify_arguments(small_scene, tiny_model, out),
                            MAMOL_TEST_FAULT=f"{killed}:block:kill")
    assert results[killed].returncode == -signal.SIGKILL
    survivor = results[1 - killed]
    assert survivor.returncode != 0
    (line,) = _errors(survivor.stderr)
    assert line.startswith(f"error: rank {1 - killed}: "), line
    assert _no_output(out), sorted(p.name for p in out.rglob("*"))


@pytest.mark.subprocess
def test_torchrun_fails_every_rank_and_cleans_up(tiny_model, small_scene, tmp_path):
    """The same through torchrun's own agent: both ranks report, torchrun fails."""
    out = tmp_path / "out"
    done = torchrun(*_classify_arguments(small_scene, tiny_model, out),
                    MAMOL_TEST_FAULT="0:block")
    assert done.returncode != 0
    assert any(line.startswith("error: rank 0: ") and "test fault injected on rank 0" in line
               for line in _errors(done.stderr))
    assert any(line.startswith("error: rank 1: rank 0 of 2 failed")
               for line in _errors(done.stderr))
    assert _no_output(out)


@pytest.mark.subprocess
def test_a_rank_dying_mid_training_fails_every_rank(small_scene, tmp_path):
    results = ranks_by_hand("train", *_training_arguments(small_scene, "pixel"),
                            "--output", tmp_path / "m.mamol", MAMOL_TEST_FAULT="1:step")
    assert all(r.returncode != 0 for r in results), [r.returncode for r in results]
    assert "test fault injected on rank 1 at 'step'" in results[1].stderr
    assert _errors(results[0].stderr), results[0].stderr[-2000:]
    assert not list(tmp_path.iterdir())


@pytest.mark.subprocess
def test_mce_and_single_process_commands_are_refused_under_torchrun(small_scene, tmp_path):
    mce = ranks_by_hand("train", *_training_arguments(small_scene, "pixel"), "--mce",
                        "--output", tmp_path / "m.mamol")
    assert [r.returncode for r in mce] == [2, 2]
    assert all("MCE training runs in one process" in r.stderr for r in mce)
    scene = ranks_by_hand("scene", "--size", 64, "--output-folder", tmp_path / "s")
    assert [r.returncode for r in scene] == [2, 2]
    assert all("'scene' runs in one process" in r.stderr for r in scene)
    assert not list(tmp_path.iterdir())


def test_threads_are_shared_among_the_ranks_of_a_machine(monkeypatch):
    from mamol.core.distributed import World, threads_per_rank
    monkeypatch.delenv("MAMOL_THREADS_PER_RANK", raising=False)
    assert threads_per_rank(4, cores=16) == 4
    assert threads_per_rank(4, cores=2) == 1
    monkeypatch.setenv("MAMOL_THREADS_PER_RANK", "3")
    assert threads_per_rank(4, cores=16) == 3
    one = World()     # a single process: every collective is the identity
    assert not one.distributed and one.broadcast(5) == 5 and one.gather("x") == ["x"]
    assert one.shard(list(range(5))) == [0, 1, 2, 3, 4]
    assert World(rank=1, size=3).shard(list(range(8))) == [1, 4, 7]


def test_part_files_already_removed_by_rank_0_are_not_an_error(tmp_path, monkeypatch):
    """Every rank cleans up at the same moment after the last stage: rank 0 removes the
    whole staging folder while the others delete their own part files. A part file that
    rank 0 removed first must not fail the rank that owned it."""
    from mamol.core.grid import ReferenceGrid
    from mamol.core.inference.sharded import PartFiles as _Parts
    grid = ReferenceGrid(crs_wkt="", x_origin=0.0, y_origin=6.0, pixel_width=1.0,
                         pixel_height=1.0, width=8, height=6)
    parts = _Parts(tmp_path, 3, {"classes": (np.uint8, 1, 0)}, grid)
    parts.write("classes", np.ones((6, 8), np.uint8), 0, 0)
    parts.close()
    for path in tmp_path.iterdir():   # rank 0's rmtree got there first …
        path.unlink()
    with monkeypatch.context() as patch:   # … just after this rank saw the files there
        patch.setattr(Path, "exists", lambda self: True)
        parts.remove()
    assert not list(tmp_path.iterdir())


@pytest.mark.subprocess
@pytest.mark.gpu
def test_nccl_one_process_per_gpu_matches_one_process(tiny_model, small_scene, tmp_path):
    import torch
    gpus = min(2, torch.cuda.device_count())
    arguments = _classify_arguments(small_scene, tiny_model, tmp_path / "one")
    arguments[arguments.index("--device") + 1] = "auto"
    single = engine(*arguments)
    assert single.returncode == 0, single.stderr[-3000:]
    arguments = _classify_arguments(small_scene, tiny_model, tmp_path / "gpus")
    arguments[arguments.index("--device") + 1] = "auto"
    ranks = torchrun(*arguments, ranks=gpus)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    for _, name in CLASSIFY_OUTPUTS:
        assert _raster(tmp_path / "one" / name)[0].tobytes() == \
            _raster(tmp_path / "gpus" / name)[0].tobytes(), name
