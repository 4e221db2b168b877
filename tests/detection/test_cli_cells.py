"""``connectome-detect train-cells`` and ``segment-cells`` on real files."""

import h5py
import numpy as np
import pytest
import zarr

from detection.cells.boundaries import AffinityNet
from detection.cells.evaluation import variation_of_information
from detection.cli import main
from tests.detection.test_cells_segmentation import membrane_phantom


@pytest.fixture
def phantom_file(tmp_path):
    em, labels = membrane_phantom((16, 48, 48), seed=3)
    path = tmp_path / "phantom.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=em).attrs["resolution"] = [10.0, 10.0, 10.0]
        f.create_dataset("cells", data=labels).attrs["resolution"] = [10.0, 10.0, 10.0]
    return path, labels


def test_train_then_segment_cells(phantom_file, tmp_path, capsys):
    path, labels = phantom_file
    model_path = tmp_path / "cells.aff"
    assert main(["train-cells", "--volume", f"{path}:raw", "--labels", f"{path}:cells",
                 "--validation-fraction", "0.25", "--iterations", "60", "--width", "4",
                 "--pixel-nm", "10", "--out", str(model_path)]) == 0
    printed = capsys.readouterr().out
    model = AffinityNet.load(model_path)
    threshold = model.agglomeration["threshold"]
    assert f"merge threshold {threshold:.2f}" in printed
    assert model.agglomeration["validation"] == [f"{path}:raw z 12-16"]

    out = tmp_path / "cells.zarr"
    assert main(["segment-cells", "--volume", f"{path}:raw", "--model", str(model_path),
                 "--out", str(out), "--block-shape", "8", "24", "24",
                 "--truth", f"{path}:cells"]) == 0
    printed = capsys.readouterr().out
    cells = zarr.open_group(str(out), mode="r")["cells"][:]
    assert cells.shape == labels.shape and (cells > 0).all()
    voi = variation_of_information(cells, labels)
    assert f"VOI split {voi.split:.4f} merge {voi.merge:.4f}" in printed
    # Twelve Voronoi cells on clean membranes: far better than one cell or one per voxel.
    assert voi.total < 2.0


def test_cell_commands_name_bad_input(phantom_file, tmp_path, capsys):
    path, _ = phantom_file
    assert main(["train-cells", "--volume", f"{path}:raw", "--labels", f"{path}:nothing",
                 "--out", str(tmp_path / "m.aff")]) == 2
    assert "nothing" in capsys.readouterr().err
    assert main(["train-cells", "--volume", f"{path}:raw", "--labels", f"{path}:cells",
                 "--validation-fraction", "1.5", "--out", str(tmp_path / "m.aff")]) == 2
    assert "--validation-fraction" in capsys.readouterr().err
    assert main(["segment-cells", "--volume", f"{path}:raw", "--model", str(path),
                 "--out", str(tmp_path / "c.zarr")]) == 2
    assert "affinity model" in capsys.readouterr().err
