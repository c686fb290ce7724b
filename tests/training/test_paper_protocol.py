"""The paper-protocol harness (bench/paper/paper_protocol.py) and its datasets."""
import json
import sys

import numpy as np
import pytest
from osgeo import gdal

from support import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "bench" / "paper"))
import paper_protocol  # noqa: E402
import protocol_datasets  # noqa: E402

from mamol.core.errors import MamolInputError  # noqa: E402
from mamol.core.grid import inspect_raster, reference_grid  # noqa: E402
from mamol.training.labels import labels_from_raster  # noqa: E402

TRENTO = SHARED_DATA / "trento" / "trento.npz"


def test_plan_follows_the_paper():
    plan = paper_protocol.planned_runs([1, 3, 5], ["hs", "sar", "lidar"], "lidar",
                                       [0.5, 0.7, 0.9])
    assert len(plan["1"]) == 9 and len(plan["3"]) == 4 and len(plan["5"]) == 15
    table1 = {label: run.availability for label, run in plan["1"]}
    assert table1["0.7|missing_other"] == (1.0, pytest.approx(0.3))
    assert table1["0.7|missing_hs"] == (pytest.approx(0.3), 1.0)
    assert table1["0.9|missing_both"] == (pytest.approx(0.55), pytest.approx(0.55))
    assert [run.availability for _, run in plan["3"]] == [
        (0.75, 0.75, 0.75), (1.0, 0.75, 0.5), (0.5, 1.0, 0.75), (0.75, 0.5, 1.0)]
    for _, run in plan["3"]:  # every Table 3 row loses 75 % of modality-samples in all
        assert sum(1 - a for a in run.availability) == pytest.approx(0.75)
    # MaMOL (full) in Table 5 is Table 1's missing-both run: trained once
    keys = {run.key for rows in plan.values() for _, run in rows}
    assert len(keys) == 9 + 4 + 12
    with pytest.raises(MamolInputError, match="Table 3 needs three"):
        paper_protocol.planned_runs([3], ["hs", "lidar"], "lidar", [0.5])


def test_seeds_repeat_tables_1_and_5_and_the_tile_kind_marks_every_key():
    default = paper_protocol.planned_runs([1, 5], ["hs", "lidar"], "lidar", [0.5, 0.7])
    assert [run.key for _, run in default["1"]][:3] == [
        "full_hs100-lidar50", "full_hs50-lidar100", "full_hs75-lidar75"]
    assert all(run.seed is None and run.kind == "pixel"
               for rows in default.values() for _, run in rows)
    plan = paper_protocol.planned_runs([1, 5], ["hs", "lidar"], "lidar", [0.5, 0.7],
                                       kind="tile", table_seeds=[0, 1, 2])
    assert len(plan["1"]) == 6 * 3 and len(plan["5"]) == 10 * 3
    runs = [run for rows in plan.values() for _, run in rows]
    assert all(run.kind == "tile" and run.key.endswith("_tile") for run in runs)
    assert {run.seed for run in runs} == {0, 1, 2}
    by_label = {}
    for label, run in plan["1"]:
        by_label.setdefault(label, []).append(run.key)
    assert by_label["0.5|missing_both"] == [
        "full_hs75-lidar75_seed0_tile", "full_hs75-lidar75_seed1_tile",
        "full_hs75-lidar75_seed2_tile"]
    # Table 5's MaMOL (full) row is Table 1's missing-both runs, seed for seed
    assert len({run.key for run in runs}) == 6 * 3 + 8 * 3
    # pixel and tile runs never share a key, so they can share an output folder
    pixel = paper_protocol.planned_runs([1, 5], ["hs", "lidar"], "lidar", [0.5, 0.7],
                                        table_seeds=[0, 1, 2])
    assert not {r.key for rows in pixel.values() for _, r in rows} & {r.key for r in runs}
    with pytest.raises(MamolInputError, match="pixel model kind only"):
        paper_protocol.planned_runs([6], ["hs", "lidar"], "lidar", [0.5], kind="tile")
    with pytest.raises(MamolInputError, match="pixel or tile"):
        paper_protocol.planned_runs([1], ["hs", "lidar"], "lidar", [0.5], kind="dense")


def test_tables_show_mean_and_std_over_seeds_and_single_seed_tables_are_unchanged():
    plan = paper_protocol.planned_runs([1, 5], ["hs", "lidar"], "lidar", [0.5])
    results = {run.key: {"oa": 0.8125, "kappa": 0.75} for rows in plan.values()
               for _, run in rows}
    text = paper_protocol.markdown(plan, results, "lidar")
    assert ("### Table 1 — missing rate × train/test availability (HS + LiDAR; "
            "OA % / κ × 100)\n\n| Missing rate | Train/Test HS | Train/Test LiDAR | Case | "
            "MaMOL |\n|---:|---:|---:|---|---:|\n"
            "| 50% | 100% | 50% | missing_other | 81.25 / 75.00 |") in text
    assert ("### Table 5 — expert ablations, missing both (HS + LiDAR; OA %)\n\n"
            "| Method | 50% | Avg. |") in text
    assert "| MaMOL (full) (`full`) | 81.25 | 81.25 |" in text
    assert "±" not in text and "tile" not in text

    plan = paper_protocol.planned_runs([1, 5], ["hs", "lidar"], "lidar", [0.5],
                                       kind="tile", table_seeds=[0, 1, 2])
    results = {}
    for rows in plan.values():
        for _, run in rows:
            results[run.key] = {"oa": 0.7 + run.seed / 10, "kappa": 0.6 + run.seed / 20}
    text = paper_protocol.markdown(plan, results, "lidar")
    assert "OA % / κ × 100; tile model kind; mean ± std over seeds 0, 1, 2)" in text
    assert "| Case | MaMOL (tile) |" in text
    # OA 70, 80, 90 -> 80 ± 10; κ 60, 65, 70 -> 65 ± 5
    assert "| 50% | 75% | 75% | missing_both | 80.00 ± 10.00 / 65.00 ± 5.00 |" in text
    assert "| MaMOL (full) (`full`) | 80.00 ± 10.00 | 80.00 |" in text
    # a row waits for all its seeds
    del results[plan["1"][0][1].key]
    text = paper_protocol.markdown(plan, results, "lidar")
    assert "| 50% | 100% | 50% | missing_other | — |" in text


@pytest.mark.slow
def test_tile_runs_share_an_output_folder_with_pixel_runs(tmp_path):
    # a finished per-pixel run with the same row as a tile run: the tile run must not reuse it
    pixel_run = tmp_path / "runs" / "full_hs100-lidar50"
    pixel_run.mkdir(parents=True)
    pixel_record = {"oa": 0.125, "kappa": 0.0, "model_kind": "pixel"}
    (pixel_run / "result.json").write_text(json.dumps(pixel_record))
    (tmp_path / "results.md").write_text("pixel tables\n")
    argv = ["--dataset", "sample", "--scene-size", "128", "--rates", "0.5", "--epochs", "1",
            "--tables", "1", "--train-per-class", "30", "--test-per-class", "30",
            "--model-kind", "tile", "--out", str(tmp_path)]
    assert paper_protocol.main(argv) == 0
    assert json.loads((pixel_run / "result.json").read_text()) == pixel_record
    assert (tmp_path / "results.md").read_text() == "pixel tables\n"
    assert not (tmp_path / "protocol.json").exists()
    protocol = json.loads((tmp_path / "protocol_tile.json").read_text())
    assert protocol["model_kind"] == "tile"
    assert protocol["table_seeds"]["1 and 5"] is None
    assert [entry["key"] for entry in protocol["plan"]["1"]] == [
        "full_hs100-lidar50_tile", "full_hs50-lidar100_tile", "full_hs75-lidar75_tile"]
    for entry in protocol["plan"]["1"]:
        record = json.loads((tmp_path / "runs" / entry["key"] / "result.json").read_text())
        assert record["model_kind"] == "tile"   # read back from the trained model's header
        assert 0.0 <= record["oa"] <= 1.0 and record["test_samples"] > 0
    text = (tmp_path / "results_tile.md").read_text()
    assert "tile model kind" in text and "| MaMOL (tile) |" in text and "12.50" not in text


@pytest.mark.slow
def test_quick_mode_end_to_end_on_the_sample_scene(tmp_path):
    argv = ["--dataset", "sample", "--scene-size", "128", "--rates", "0.5", "--epochs", "1",
            "--train-per-class", "40", "--test-per-class", "40", "--out", str(tmp_path)]
    assert paper_protocol.main(argv) == 0
    text = (tmp_path / "results.md").read_text()
    for title in ("Table 1", "Table 3", "Table 5"):
        assert title in text
    table_rows = [line for line in text.splitlines() if line.startswith("| ")
                  and not line.startswith("| Missing") and not line.startswith("| Method")]
    assert len(table_rows) == 3 + 4 + 5 and not any("—" in row for row in table_rows)
    protocol = json.loads((tmp_path / "protocol.json").read_text())
    assert protocol["seeds"]["test simulation"] == 1
    assert protocol["settings"]["arch"] == "mamol-tiny-vit"
    assert protocol["settings"]["epochs"] == 1
    results = {p.parent.name: json.loads(p.read_text())
               for p in (tmp_path / "runs").glob("*/result.json")}
    assert len(results) == 11
    for record in results.values():
        assert 0.0 <= record["oa"] <= 1.0 and record["test_samples"] > 0
    # the test side sees the simulated availability: HS on ~half of the missing-HS samples
    missing_hs = results["full_hs50-lidar100"]["test_patterns"]
    with_hs = sum(n for p, n in missing_hs.items() if "hs" in p)
    assert 0.4 <= with_hs / sum(missing_hs.values()) <= 0.6
    assert not list((tmp_path / "runs").glob("*/model.mamol"))
    # a rerun reuses every finished run
    before = (tmp_path / "results.md").read_text()
    assert paper_protocol.main(argv) == 0
    assert (tmp_path / "results.md").read_text() == before


@pytest.mark.skipif(not TRENTO.is_file(), reason="shared Trento data not present")
@pytest.mark.platform   # reads the benchmark files (.npz, .mat, .npy)
def test_trento_with_real_lidar_and_standin_hs(tmp_path):
    dataset = protocol_datasets.trento_dataset(tmp_path)
    assert dataset.names() == ["hs", "lidar"]
    hs_path = dict(dataset.modalities)["hs"]
    assert "STANDIN" in hs_path
    hs = gdal.Open(hs_path)
    assert (hs.RasterXSize, hs.RasterYSize, hs.RasterCount) == (600, 166, 63)
    assert hs.GetRasterBand(1).GetDescription().startswith("STAND-IN band 1: 402.9 nm")
    assert "not the AISA Eagle" in hs.GetMetadataItem("STANDIN")
    with np.load(TRENTO) as data:
        lidar = gdal.Open(dict(dataset.modalities)["lidar"]).ReadAsArray()
        assert np.array_equal(np.moveaxis(lidar, 0, -1), data["lidar"])
    grid = reference_grid([inspect_raster(hs_path, "HS")])
    train = labels_from_raster(dataset.train, grid)
    test = labels_from_raster(dataset.test, grid)
    assert (len(train), len(test)) == (819, 29395)
    assert [c.name for c in train.classes] == ["Apple trees", "Buildings", "Ground", "Woods",
                                               "Vineyard", "Roads"]
    assert not set(zip(train.rows, train.cols)) & set(zip(test.rows, test.cols))


def _write_mat(path, key, array):
    from scipy.io import savemat
    savemat(str(path), {key: array})


@pytest.mark.platform   # reads the benchmark files (.npz, .mat, .npy)
def test_original_files_by_name_and_key(tmp_path):
    pytest.importorskip("scipy")
    source = tmp_path / "Augsburg"
    source.mkdir()
    rng = np.random.default_rng(0)
    train = np.zeros((20, 30), np.uint8)
    test = np.zeros((20, 30), np.uint8)
    train[2:5, 2:5], test[10:15, 10:20] = 1, 2
    _write_mat(source / "data_HS_LR.mat", "data_HS_LR", rng.random((20, 30, 5)))
    _write_mat(source / "data_SAR_HR.mat", "some_other_name", rng.random((20, 30, 4)))
    np.save(source / "dsm.npy", rng.random((20, 30)))
    _write_mat(source / "TrainImage.mat", "TrainImage", train)
    _write_mat(source / "TestImage.mat", "TestImage", test)
    dataset = protocol_datasets.original_dataset("augsburg", source, tmp_path / "out")
    assert dataset.names() == ["hs", "sar", "lidar"]
    bands = [gdal.Open(path).RasterCount for _, path in dataset.modalities]
    assert bands == [5, 4, 1]
    labels = gdal.Open(dataset.test.path)
    assert np.array_equal(labels.ReadAsArray(), test)
    assert "Residential area" in gdal.Info(labels)
    # overlapping maps and missing files are refused with the reason
    _write_mat(source / "TestImage.mat", "TestImage", train)
    with pytest.raises(MamolInputError, match="overlap"):
        protocol_datasets.original_dataset("augsburg", source, tmp_path / "out2")
    (source / "data_DSM.mat").unlink(missing_ok=True)
    (source / "dsm.npy").unlink()
    _write_mat(source / "TestImage.mat", "TestImage", test)
    with pytest.raises(MamolInputError, match="data_DSM.mat"):
        protocol_datasets.original_dataset("augsburg", source, tmp_path / "out3")
