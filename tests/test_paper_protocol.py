"""The paper-protocol harness (bench/paper_protocol.py) and its datasets."""
import json
import sys

import numpy as np
import pytest
from osgeo import gdal

from conftest import REPO, SHARED_DATA

sys.path.insert(0, str(REPO / "bench"))
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
