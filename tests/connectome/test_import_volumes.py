"""Importing volumes and segmentations: real files in, chunked zarr and cell rows out."""

import h5py
import numpy as np
import pytest
import tifffile
import zarr

from connectome.cells.models import Cell
from connectome.datasets.models import Dataset, Layer
from connectome.imports.volumes import import_volume
from connectome.jobs.models import Job
from connectome.jobs.services import job_run_inline
from detection.io.sources import VolumeFormatError
from detection.io.zarr_store import open_multiscale
from tests.conftest import shared_file
from tests.connectome.factories import DatasetFactory

pytestmark = pytest.mark.django_db


def _write_h5(path, arrays: dict, resolution=(40.0, 8.0, 8.0)):
    with h5py.File(path, "w") as f:
        for name, array in arrays.items():
            ds = f.create_dataset(name, data=array, chunks=True, compression="gzip")
            ds.attrs["resolution"] = resolution
    return path


def _labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 12, size=(shape[0] // 4 + 1, shape[1] // 8 + 1, shape[2] // 8 + 1))
    return np.kron(coarse, np.ones((4, 8, 8), dtype=np.int64))[: shape[0], : shape[1], : shape[2]]


def _nothing_written(data_root, dataset):
    assert not Layer.objects.filter(dataset=dataset).exists()
    assert not Cell.objects.filter(dataset=dataset).exists()
    layers_dir = data_root / "datasets" / str(dataset.pk) / "layers"
    assert not layers_dir.exists() or not any(layers_dir.iterdir())
    staging = data_root / "datasets" / str(dataset.pk) / "staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_import_em_and_segmentation_from_hdf5(data_root, tmp_path):
    em = np.random.default_rng(1).integers(0, 255, size=(20, 70, 90), dtype=np.uint8)
    seg = _labels(em.shape).astype(np.uint64)
    seg[seg == 11] = np.uint64(2**64 - 5)  # an id above the signed 64-bit range
    path = _write_h5(tmp_path / "vol.h5", {"volumes/raw": em, "volumes/labels/neuron_ids": seg})
    dataset = DatasetFactory()

    layer = import_volume(dataset=dataset, source=str(path), name="em", chunks=(8, 32, 32))
    seg_layer = import_volume(dataset=dataset, source=str(path), name="seg", kind="segmentation",
                              dataset_path="volumes/labels/neuron_ids", chunks=(8, 32, 32))

    dataset.refresh_from_db()
    assert dataset.shape == (20, 70, 90)
    group, meta = open_multiscale(layer.path)
    np.testing.assert_array_equal(group["0"][:], em)
    assert layer.chunks == (8, 32, 32) and layer.dtype == "uint8"
    assert len(layer.downsample_factors) >= 1
    seg_group, _ = open_multiscale(seg_layer.path)
    np.testing.assert_array_equal(seg_group["0"][:], seg)

    ids, counts = np.unique(seg[seg > 0], return_counts=True)
    cells = {c.segment_id: c for c in Cell.objects.filter(dataset=dataset)}
    assert sorted(cells) == [int(i) for i in ids]
    big = cells[2**64 - 5]
    assert big.size_voxels == counts[-1]
    zz, yy, xx = np.nonzero(seg == np.uint64(2**64 - 5))
    assert (big.bbox_min_z, big.bbox_max_z) == (zz.min(), zz.max() + 1)
    assert big.centroid_y == pytest.approx(yy.mean() * 8.0)
    assert big.centroid_z == pytest.approx(zz.mean() * 40.0)


def test_import_tiff_folder_through_a_job(data_root, tmp_path):
    em = np.random.default_rng(2).integers(0, 60000, size=(5, 40, 30), dtype=np.uint16)
    folder = tmp_path / "sections"
    folder.mkdir()
    for z in range(em.shape[0]):
        tifffile.imwrite(folder / f"s{z + 1}.tif", em[z])  # s10 after s9: natural order
    dataset = DatasetFactory()
    job = job_run_inline(kind="import_volume", dataset=dataset,
                         parameters={"source": str(folder), "name": "em"})
    assert job.state == Job.State.DONE, job.error
    assert job.result["shape"] == [5, 40, 30]
    assert job.progress_done == job.progress_total > 0
    layer = Layer.objects.get(pk=job.result["layer_id"])
    np.testing.assert_array_equal(zarr.open_group(str(layer.path), "r")["0"][:], em)


def test_import_zarr(data_root, tmp_path):
    em = np.arange(6 * 20 * 24, dtype=np.uint8).reshape(6, 20, 24)
    zarr.save_array(str(tmp_path / "em.zarr"), em)
    dataset = DatasetFactory()
    layer = import_volume(dataset=dataset, source=str(tmp_path / "em.zarr"), name="em")
    np.testing.assert_array_equal(zarr.open_group(str(layer.path), "r")["0"][:], em)


@pytest.mark.slow
def test_medulla_segmentation_gives_cells_with_bincount_sizes(data_root):
    path = shared_file("medulla_fibsem_250.h5")
    with h5py.File(path, "r") as f:
        labels = f["volumes/labels/neuron_ids"][:]
        resolution = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
    counts = np.bincount(labels.ravel().astype(np.int64))
    every_id = {i: int(c) for i, c in enumerate(counts) if c}
    # 526 ids, one of which (0) is a 250-voxel line along z at y = x = 0: background.
    assert len(every_id) == 526 and every_id[0] == 250

    background = Dataset.objects.create(name="medulla", voxel_size_z=resolution[0],
                                        voxel_size_y=resolution[1], voxel_size_x=resolution[2])
    import_volume(dataset=background, source=str(path), name="em", dataset_path="volumes/raw")
    import_volume(dataset=background, source=str(path), name="neurons", kind="segmentation",
                  dataset_path="volumes/labels/neuron_ids")
    got = dict(Cell.objects.filter(dataset=background).values_list("segment_id", "size_voxels"))
    assert got == {i: c for i, c in every_id.items() if i != 0}

    dense = Dataset.objects.create(name="medulla-dense", voxel_size_z=10, voxel_size_y=10,
                                   voxel_size_x=10)
    import_volume(dataset=dense, source=str(path), name="neurons", kind="segmentation",
                  dataset_path="volumes/labels/neuron_ids", background_id=None)
    got = dict(Cell.objects.filter(dataset=dense).values_list("segment_id", "size_voxels"))
    assert len(got) == 526
    assert got == every_id


# --- bad input: a clear message, and nothing written -----------------------------------------

def test_truncated_tiff_names_the_file_and_writes_nothing(data_root, tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.ones((6, 64, 64), dtype=np.uint8))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    dataset = DatasetFactory()
    with pytest.raises(VolumeFormatError, match="stack.tif") as info:
        import_volume(dataset=dataset, source=str(path), name="em")
    assert "trunc" in str(info.value).lower() or "page" in str(info.value).lower()
    _nothing_written(data_root, dataset)


def test_unreadable_file_names_the_file(data_root, tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not an HDF5 file" * 10)
    dataset = DatasetFactory()
    with pytest.raises(VolumeFormatError, match="garbage.h5"):
        import_volume(dataset=dataset, source=str(path), name="em")
    _nothing_written(data_root, dataset)


def test_wrong_dtype_for_em_is_refused(data_root, tmp_path):
    path = _write_h5(tmp_path / "float.h5", {"volumes/raw": np.zeros((4, 8, 8), np.float64)})
    dataset = DatasetFactory()
    with pytest.raises(VolumeFormatError, match=r"float\.h5.*em volume must be one of uint8, uint16.*float64"):
        import_volume(dataset=dataset, source=str(path), name="em")
    _nothing_written(data_root, dataset)


def test_float_segmentation_is_refused(data_root, tmp_path):
    path = _write_h5(tmp_path / "seg.h5", {"seg": np.zeros((4, 8, 8), np.float32)})
    dataset = DatasetFactory()
    with pytest.raises(VolumeFormatError, match="segmentation volume must be one of .*float32"):
        import_volume(dataset=dataset, source=str(path), name="seg", kind="segmentation")
    _nothing_written(data_root, dataset)


def test_segmentation_that_does_not_match_its_volume(data_root, tmp_path):
    path = _write_h5(tmp_path / "v.h5", {
        "volumes/raw": np.zeros((4, 16, 16), np.uint8),
        "volumes/labels/neuron_ids": np.ones((4, 16, 12), np.uint32),
    })
    dataset = DatasetFactory()
    import_volume(dataset=dataset, source=str(path), name="em")
    with pytest.raises(ValueError, match=r"v\.h5 \(dataset 'volumes/labels/neuron_ids'\).*\(4, 16, 12\).*\(4, 16, 16\)"):
        import_volume(dataset=dataset, source=str(path), name="seg", kind="segmentation",
                      dataset_path="volumes/labels/neuron_ids")
    assert list(dataset.layers.values_list("name", flat=True)) == ["em"]
    assert not Cell.objects.filter(dataset=dataset).exists()


def test_voxel_size_mismatch_is_refused_unless_overridden(data_root, tmp_path):
    path = _write_h5(tmp_path / "v.h5", {"raw": np.zeros((4, 16, 16), np.uint8)}, resolution=(50, 4.6, 4.6))
    dataset = DatasetFactory()  # 40 x 8 x 8 nm
    with pytest.raises(ValueError, match=r"voxel size .*\(50, 4\.6, 4\.6\).*\(40, 8, 8\)"):
        import_volume(dataset=dataset, source=str(path), name="em")
    _nothing_written(data_root, dataset)
    layer = import_volume(dataset=dataset, source=str(path), name="em", voxel_size=(40, 8, 8))
    assert layer.shape == (4, 16, 16)


def test_negative_ids_found_midway_leave_nothing_behind(data_root, tmp_path):
    seg = np.ones((16, 64, 64), np.int32)
    seg[-1, -1, -1] = -7  # in the last block: earlier blocks are already written by then
    path = _write_h5(tmp_path / "neg.h5", {"seg": seg})
    dataset = DatasetFactory()
    with pytest.raises(VolumeFormatError, match="neg.h5.*negative ids"):
        import_volume(dataset=dataset, source=str(path), name="seg", kind="segmentation",
                      chunks=(4, 16, 16))
    _nothing_written(data_root, dataset)


def test_failed_job_keeps_existing_layers(data_root, tmp_path):
    good = _write_h5(tmp_path / "good.h5", {"raw": np.full((4, 16, 16), 7, np.uint8)})
    dataset = DatasetFactory()
    first = job_run_inline(kind="import_volume", dataset=dataset, parameters={"source": str(good), "name": "em"})
    assert first.state == Job.State.DONE
    # A second import of that name is refused when it is submitted (no job row is kept) ...
    from connectome.jobs.services import JobConflict

    with pytest.raises(JobConflict) as refused:
        job_run_inline(kind="import_volume", dataset=dataset, parameters={"source": str(good), "name": "em"})
    assert str(refused.value) == f"dataset '{dataset.name}' already has a layer named 'em'"
    assert Job.objects.filter(dataset=dataset).count() == 1
    # ... and one that fails while it runs leaves the existing layer as it was.
    bad = _write_h5(tmp_path / "bad.h5", {"raw": np.full((4, 16, 16), -1, np.int16)})
    failed = job_run_inline(kind="import_volume", dataset=dataset,
                            parameters={"source": str(bad), "name": "seg", "kind": "segmentation"})
    assert failed.state == Job.State.FAILED and "negative ids" in failed.error
    layer = dataset.layers.get()
    assert zarr.open_group(str(layer.path), "r")["0"][0, 0, 0] == 7


def test_missing_source_is_a_parameter_error(data_root, tmp_path):
    dataset = DatasetFactory()
    from connectome.jobs.services import JobParameterError

    with pytest.raises(JobParameterError, match=r"source: .*nope\.h5 does not exist"):
        job_run_inline(kind="import_volume", dataset=dataset,
                       parameters={"source": str(tmp_path / "nope.h5"), "name": "em"})
