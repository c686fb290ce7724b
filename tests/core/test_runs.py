"""What a run writes besides its outputs (core/runs.py, core/staging.py): output locks, run
folders, what a dead run leaves and who removes it, and a full disk named as such."""
import errno
import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mamol.core import runs
from mamol.core.errors import MamolInputError
from mamol.core.feedback import Reporter
from mamol.core.disk import NoSpaceError, reporting_full_disk
from mamol.core.staging import staged_files
from support import small_disk

pytestmark = pytest.mark.platform   # files, locks and mounts of this platform


def dead_pid() -> int:
    """The pid of a process that has exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def foreign_owner(pid: int) -> dict:
    return {"host": runs.owner()["host"], "pid": pid, "started": runs.process_start(pid),
            "token": "someoneelse", "command": "mamol classify", "since": "2026-12-04 10:00:00"}


def test_a_live_run_holds_its_outputs_and_a_second_run_is_refused(tmp_path):
    final = tmp_path / "c.tif"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runs.lock_path(final).write_text(json.dumps(foreign_owner(sleeper.pid)))
        with pytest.raises(MamolInputError) as raised:
            with runs.locked_outputs([final]):
                pass
        message = str(raised.value)
        assert f"'{final}' is being written by another MaMOL run, process {sleeper.pid}" \
            in message
        assert "mamol classify, started 2026-12-04 10:00:00" in message
        assert runs.lock_path(final).exists()   # the other run's lock is left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_dead_runs_lock_is_taken_over_and_a_lock_is_released(tmp_path):
    final = tmp_path / "c.tif"
    runs.lock_path(final).write_text(json.dumps(foreign_owner(dead_pid())))
    with runs.locked_outputs([final]):
        record = json.loads(runs.lock_path(final).read_text())
        assert record["pid"] == os.getpid() and record["token"] == runs.token()
        with runs.locked_outputs([final]):   # nested in the same run: no conflict
            pass
        assert runs.lock_path(final).exists()
    assert not runs.lock_path(final).exists()


def test_a_reused_pid_does_not_keep_a_dead_run_alive(tmp_path):
    if runs.process_start(os.getpid()) is None:
        pytest.skip("process start times need Linux's /proc")
    record = foreign_owner(os.getppid())
    record["started"] = runs.process_start(os.getppid()) + 1   # same pid, another process
    assert not runs.owner_alive(record)
    record["started"] -= 1
    assert runs.owner_alive(record)


def test_staging_lives_in_a_run_folder_that_is_announced_first_and_removed(tmp_path):
    seen = []

    def announce(path):
        seen.append((path, path.exists()))
    runs.announce = announce
    try:
        finals = [tmp_path / "a" / "c.tif", tmp_path / "b" / "p.tif"]
        with staged_files(finals) as staged:
            for final, temporary in staged.items():
                assert temporary.parent.name == f".mamol-run-{runs.token()}"
                assert temporary.parent.parent == final.parent
                temporary.write_bytes(b"x")
        assert all(final.read_bytes() == b"x" for final in finals)
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["c.tif"]
        with pytest.raises(RuntimeError, match="boom"):
            with staged_files([tmp_path / "a" / "d.tif"]) as staged:
                next(iter(staged.values())).write_bytes(b"half")
                raise RuntimeError("boom")
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["c.tif"]
    finally:
        runs.announce = None
    assert seen and not any(existed for _, existed in seen)   # told before it was made
    assert {p.name for p, _ in seen} >= {".c.tif.mamol-lock", f".mamol-run-{runs.token()}"}


def test_the_starter_removes_what_a_killed_run_left_and_only_that(tmp_path):
    """A run killed outright cannot clean up: the program that started it removes the
    announced run folder and its own locks, never another run's lock."""
    token = "deadbeef0001"
    folder = tmp_path / f".mamol-run-{token}"
    folder.mkdir()
    (folder / "c.tif").write_bytes(b"partial")
    mine = tmp_path / ".c.tif.mamol-lock"
    mine.write_text(json.dumps(dict(foreign_owner(dead_pid()), token=token)))
    other = tmp_path / ".p.tif.mamol-lock"
    other.write_text(json.dumps(foreign_owner(os.getpid())))
    removed = runs.remove_leftovers([folder, mine, other, tmp_path / "never-made"], token)
    assert set(removed) == {folder, mine}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".p.tif.mamol-lock"]


def test_a_new_run_sweeps_what_dead_runs_left(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.TEMP_ROOT_VARIABLE, str(tmp_path))
    stale = tmp_path / "mamol-run-0123456789ab"
    stale.mkdir()
    (stale / runs.OWNER_FILE).write_text(json.dumps(foreign_owner(dead_pid())))
    (stale / "samples-x").mkdir()
    live = tmp_path / "mamol-run-live00000000"
    live.mkdir()
    (live / runs.OWNER_FILE).write_text(json.dumps(foreign_owner(os.getppid())))
    try:
        with runs.scratch_folder("samples-") as scratch:
            assert scratch.parent == tmp_path / f"mamol-run-{runs.token()}"
        assert not stale.exists() and live.exists()
    finally:
        runs.end()
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name]


def test_a_full_disk_is_named_with_the_folder_and_the_sizes(tmp_path):
    with pytest.raises(NoSpaceError) as raised:
        with reporting_full_disk([tmp_path], 5 << 20, "'c.tif'"):
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(raised.value)
    assert message.startswith("No space left on /")
    assert f"(folder '{tmp_path}') while writing 'c.tif' (about 5.0 MB needed, " in message
    assert "MB free)" in message
    with pytest.raises(ValueError):   # other errors pass through untouched
        with reporting_full_disk([tmp_path]):
            raise ValueError("not a disk problem")


def test_gdal_on_a_full_tmpfs_says_no_space_left(tmp_path):
    """GDAL's own words for a full disk are "WriteEncodedTile/Strip() failed"."""
    from osgeo import gdal
    gdal.UseExceptions()
    with small_disk(tmp_path / "disk", 3 << 20) as disk:
        values = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)  # 4 MiB
        memory = gdal.GetDriverByName("MEM").Create("", 1024, 1024, 1, gdal.GDT_Float32)
        memory.GetRasterBand(1).WriteArray(values)
        with pytest.raises(NoSpaceError) as raised:
            with reporting_full_disk([disk], values.nbytes, "'big.tif'"):
                gdal.Translate(str(disk / "big.tif"), memory, creationOptions=["TILED=YES"])
        memory = None
        assert f"No space left on {disk} (folder '{disk}') while writing 'big.tif'" \
            in str(raised.value)


def test_outputs_that_cannot_fit_are_refused_before_anything_is_written(tmp_path):
    with small_disk(tmp_path / "disk", 3 << 20, leave_free=64 << 10) as disk:
        with pytest.raises(NoSpaceError, match=r"No space left on .* \(about 40\.0 MB "
                                               r"needed, 0\.\d MB free\)"):
            with staged_files([disk / "c.tif"], 40 << 20):
                raise AssertionError("not reached")
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]


def test_training_samples_on_a_full_temp_root_say_so(tmp_path, monkeypatch):
    """The samples' memory maps reserve their space: a full temp root is an error that
    names it, not a SIGBUS."""
    from mamol.training.dataset import _reserved_memmap, scratch_folder
    with small_disk(tmp_path / "disk", 3 << 20) as disk:
        monkeypatch.setenv(runs.TEMP_ROOT_VARIABLE, str(disk))
        try:
            with pytest.raises(NoSpaceError, match="MAMOL_TEMP_DIR"):
                with scratch_folder() as folder:
                    _reserved_memmap(folder / "w.npy", (1000, 64, 7, 7))   # 12.5 MB
        finally:
            runs.end()
        assert list(disk.iterdir()) == []


def test_progress_moves_within_a_part_and_never_backwards():
    seen = []
    reporter = Reporter(seen.append, lambda: False)
    reporter.begin_part(0, 50)
    for done in (0, 1, 2, 1, 4):
        reporter.step(done, 4)
    assert seen == [12.5, 25.0, 50.0]


def test_a_classification_that_fills_the_disk_says_so_and_leaves_nothing(
        tiny_model, small_scene, tmp_path):
    """Room for the outputs compressed tenfold, not for what they really take: the write
    fails part-way, and the message names the disk (not GDAL's "WriteEncodedTile/Strip()
    failed")."""
    from mamol.core.inference import ClassifyConfig, classify
    with small_disk(tmp_path / "disk", 3 << 20, leave_free=120 << 10) as disk:
        config = ClassifyConfig(
            model_path=str(tiny_model), rasters=(("hs", str(small_scene.hs)),),
            output_classes=str(disk / "c.tif"), output_probabilities=str(disk / "p.tif"),
            output_entropy=str(disk / "e.tif"), device="cpu")
        with pytest.raises(NoSpaceError) as raised:
            classify(config)
        message = str(raised.value)
        # The failure's traceback holds GDAL objects in reference cycles: collected now, not
        # after the test session's QGIS (which shares this GDAL) has shut down.
        del raised
        gc.collect()
        assert f"No space left on {disk} (folder '{disk}') while writing 'c.tif', 'p.tif', " \
            "'e.tif'" in message
        assert sorted(p.name for p in disk.iterdir()) == ["ballast"]
