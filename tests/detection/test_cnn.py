"""The synapse network: receptive field, tiles and blocks against the whole volume, training on a
phantom, model files."""

import h5py
import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from detection.blockwise import predict_probability
from detection.metrics import match_by_overlap
from detection.synapses.classify import (
    ModelMismatchError,
    clean_targets,
    labels_to_targets,
)
from detection.synapses.cnn import (
    HEADS,
    CnnParameters,
    SynapseCnn,
    _average,
    downsample_factor,
    network_targets,
    receptive_radius,
    train_cnn,
    train_network,
)
from detection.synapses.instances import find_instances
from detection.synapses.model_files import load_synapse_model
from detection.synapses.resample import ResampledModel
from detection.synapses.training import TrainingVolume
from detection.synthetic.phantom import make_phantom
from tests.conftest import shared_file

SMALL = CnnParameters(width=4, depth=2, context_sections=1)


def _untrained(voxel_size=(40.0, 5.0, 5.0), parameters=SMALL, seed=3) -> SynapseCnn:
    """A network with random weights and batch-norm statistics that are not the identity, so
    every layer's arithmetic shows in the output."""
    torch.manual_seed(seed)
    model = SynapseCnn(voxel_size=voxel_size, parameters=parameters, mean=120.0, std=40.0)
    for module in model.net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.01, 0.01)
            module.running_var.uniform_(0.8, 1.2)
    with torch.no_grad():
        model.net.head.weight.mul_(50.0)  # spread the probabilities over (0, 1)
    model.net.eval()
    return model


def test_receptive_radius_bounds_what_an_output_pixel_reads():
    model = _untrained(voxel_size=(40.0, 10.0, 10.0))
    radius = receptive_radius(SMALL.depth)
    rng = np.random.default_rng(0)
    sections = rng.normal(size=(1, 3, 96, 96)).astype(np.float32)
    poked = sections.copy()
    poked[0, 1, 48, 48] += 5.0
    with torch.inference_mode():
        a, b = (model.net(torch.from_numpy(s))[0, 0].numpy() for s in (sections, poked))
    changed = np.argwhere(np.abs(a - b) > 1e-6)
    reach = np.abs(changed - 48).max()
    # Two 3x3 convolutions per level down (1, 2, 4 pixels wide) and up (2, 1), plus pooling.
    assert radius == 2 * (1 + 2 + 4) + 2 * (1 + 2) + 4 == 24
    assert 12 < reach <= radius


def test_tiles_give_the_whole_section():
    model = _untrained(voxel_size=(40.0, 10.0, 10.0))
    rng = np.random.default_rng(1)
    sections = rng.normal(size=(2, 3, 75, 61)).astype(np.float32)
    whole = model.predict_network(sections, tile=1024)
    tiled = model.predict_network(sections, tile=16)
    assert whole.shape == (2, 75, 61)
    assert np.abs(whole - tiled).max() < 1e-5
    # The comparison is not between constants.
    assert (np.abs(whole - np.median(whole)) > 0.01).mean() > 0.5


@pytest.mark.parametrize("voxel_size", [(40.0, 5.0, 5.0), (50.0, 4.6, 4.6)])
def test_blocks_give_the_whole_volume(voxel_size):
    model = _untrained(voxel_size=voxel_size)
    assert model.factor == 2 and model.grid_step == (1, 2, 2)
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 256, size=(7, 150, 134)).astype(np.uint8)
    whole = model.predict_region(volume)
    assert whole.shape == volume.shape
    blocks = predict_probability(volume, model, block_shape=(3, 42, 38))
    assert np.abs(blocks - whole).max() < 1e-5
    # One block read with its halo at an offset that is not on the pooling grid.
    core = (slice(2, 5), slice(58, 100), slice(62, 98))
    halo = model.halo_voxels()
    outer = tuple(slice(max(0, c.start - h), min(n, c.stop + h))
                  for c, h, n in zip(core, halo, volume.shape))
    inner = tuple(slice(c.start - o.start, c.stop - o.start) for c, o in zip(core, outer))
    part = model.predict_region(volume[outer], core=inner, offset=tuple(o.start for o in outer))
    assert np.abs(part - whole[core]).max() < 1e-5
    with pytest.raises(ValueError, match="multiples of 2"):
        model.predict_region(volume, core=(slice(0, 7), slice(1, 9), slice(0, 8)))


def test_pixels_and_targets_at_the_network_resolution():
    assert downsample_factor((50.0, 4.6, 4.6), 10.0) == 2
    assert downsample_factor((40.0, 8.0, 8.0), 10.0) == 1
    volume = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    averaged = _average(volume, 2)
    assert averaged.shape == (2, 2, 3)
    assert averaged[0, 0, 0] == np.mean([0, 1, 5, 6])
    assert averaged[0, 1, 2] == np.mean([14, 14, 19, 19])  # the last column mirrored
    targets = np.array([[[1, 1, 0, 0, -1, 0],
                         [0, 1, 0, 0, 0, 0]]], np.int8)
    assert network_targets(targets, 2).tolist() == [[[1, 0, -1]]]
    targets[0, 0, 1] = 0  # two of four positive: still a synapse pixel
    assert network_targets(targets, 2)[0, 0, 0] == 1
    targets[0, 1, 1] = -1  # one of four: neither
    assert network_targets(targets, 2)[0, 0, 0] == -1


@pytest.fixture(scope="module")
def phantoms():
    return (make_phantom((12, 112, 112), n_cells=12, n_synapses=12, n_mitochondria=8, seed=31),
            make_phantom((12, 112, 112), n_cells=12, n_synapses=12, n_mitochondria=8, seed=32))


def phantom_volume(phantom, name, box=(slice(None),) * 3, *, vesicles=True) -> TrainingVolume:
    targets = clean_targets(labels_to_targets(phantom.synapse_labels[box], convention="binary"),
                            voxel_size=phantom.voxel_size, ignore_band_nm=30.0)
    aux = {"mitochondria": phantom.mitochondria[box].astype(np.int8),
           "membrane": (phantom.segmentation[box] == 0).astype(np.int8)}
    if vesicles:
        aux["vesicles"] = phantom.vesicles[box].astype(np.int8)
    return TrainingVolume(name=name, em=phantom.em[box], voxel_size=phantom.voxel_size,
                          targets=targets, sites=phantom.synapse_labels[box], aux=aux)


@pytest.fixture(scope="module")
def training_volumes(phantoms):
    """Two phantom crops of different shapes; the second has no vesicle map, as real volumes
    have none."""
    train, _ = phantoms
    other = make_phantom((10, 96, 128), n_cells=10, n_synapses=10, n_mitochondria=8, seed=33)
    return [phantom_volume(train, "phantom 31"),
            phantom_volume(other, "phantom 33 crop", (slice(1, 9), slice(0, 96), slice(8, 120)),
                           vesicles=False)]


@pytest.fixture(scope="module")
def trained(training_volumes):
    parameters = CnnParameters(width=8, depth=2, patch=48, batch=6, iterations=300,
                               learning_rate=3e-3, seed=1)
    return train_network(training_volumes, voxel_size=(40.0, 8.0, 8.0), parameters=parameters)


def test_training_reads_volumes_of_different_shapes(trained, training_volumes):
    summary = trained.training["volumes"]
    assert [v["shape"] for v in summary] == [[12, 112, 112], [8, 96, 112]]
    labelled = [int((v.targets >= 0).sum()) for v in training_volumes]  # factor 1 at 8 nm
    assert [v["labelled_pixels"] for v in summary] == labelled
    assert summary[0]["share"] == pytest.approx(labelled[0] / sum(labelled), abs=1e-4)
    assert summary[0]["heads"] == list(HEADS)
    assert summary[1]["heads"] == ["synapse", "mitochondria", "membrane"]
    assert trained.heads == HEADS and trained.training["heads_without_labels"] == []


def test_training_finds_the_synapses_of_another_phantom(trained, phantoms):
    _, test = phantoms
    probability = trained.predict_region(test.em)
    cleft = test.synapse_labels > 0
    assert probability[cleft].mean() > 0.6
    assert probability[~cleft].mean() < 0.2
    labels, _ = find_instances(probability, voxel_size=test.voxel_size, high=0.7, low=0.4,
                               min_size_voxels=20)
    scores = match_by_overlap(labels, test.synapse_labels)
    assert scores.f1 > 0.7, scores


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a true pixel outscores a false one."""
    ranks = rankdata(scores.ravel())
    truth = truth.ravel()
    n_true, n_false = int(truth.sum()), int((~truth).sum())
    return float((ranks[truth].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false))


def test_every_head_learns_its_map(trained, phantoms):
    _, test = phantoms
    maps = trained.predict_maps(test.em)
    assert set(maps) == set(HEADS)
    np.testing.assert_array_equal(maps["synapse"], trained.predict_region(test.em))
    aucs = {"synapse": _auc(maps["synapse"], test.synapse_labels > 0),
            "vesicles": _auc(maps["vesicles"], test.vesicles),
            "mitochondria": _auc(maps["mitochondria"], test.mitochondria),
            "membrane": _auc(maps["membrane"], test.segmentation == 0)}
    # 300 steps on two small phantoms: the synapse and membrane maps are good, the vesicle and
    # mitochondrion maps (a few percent of the pixels, rarely in the patches) better than chance.
    assert aucs["synapse"] > 0.98 and aucs["membrane"] > 0.95, aucs
    assert aucs["vesicles"] > 0.8 and aucs["mitochondria"] > 0.6, aucs
    # The heads are not copies of one map.
    assert _auc(maps["vesicles"], test.segmentation == 0) < aucs["membrane"] - 0.1


def test_training_is_repeatable(trained, phantoms):
    train, _ = phantoms
    targets = clean_targets(labels_to_targets(train.synapse_labels, convention="binary"),
                            voxel_size=train.voxel_size, ignore_band_nm=30.0)
    again = train_cnn(train.em, targets, voxel_size=train.voxel_size,
                      parameters=CnnParameters(**{**trained.parameters.to_dict(), "iterations": 20}))
    once_more = train_cnn(train.em, targets, voxel_size=train.voxel_size,
                          parameters=again.parameters)
    crop = train.em[:3, :64, :64]
    assert np.array_equal(again.predict_region(crop), once_more.predict_region(crop))


def test_training_needs_both_classes(phantoms):
    train, _ = phantoms
    with pytest.raises(ValueError, match="0 synapse"):
        train_cnn(train.em, np.zeros(train.em.shape, np.int8), voxel_size=train.voxel_size,
                  parameters=SMALL)
    with pytest.raises(ValueError, match="same 3-D shape"):
        train_cnn(train.em, np.zeros((2, 2, 2), np.int8), voxel_size=train.voxel_size)


def test_model_file_round_trip_and_refusals(trained, phantoms, tmp_path):
    _, test = phantoms
    path = trained.save(tmp_path / "synapses.cnn")
    loaded = load_synapse_model(path, voxel_size=test.voxel_size)
    assert isinstance(loaded, SynapseCnn)
    assert loaded.parameters == trained.parameters and loaded.training == trained.training
    crop = test.em[:4, :64, :64]
    assert np.array_equal(loaded.predict_region(crop), trained.predict_region(crop))
    with pytest.raises(ModelMismatchError, match=r"has sections of 50 nm and the model 40 nm"):
        load_synapse_model(path, voxel_size=(50.0, 4.6, 4.6))
    # Data of another pixel but the same sections is resampled to the model's pixel.
    resampled = load_synapse_model(path, voxel_size=(40.0, 6.0, 6.0))
    assert isinstance(resampled, ResampledModel) and resampled.model_voxel_size == (40, 8, 8)
    assert load_synapse_model(path, voxel_size=(50.0, 4.6, 4.6), allow_other_voxel_size=True)
    broken = tmp_path / "broken.cnn"
    header, weights = path.read_bytes().split(b"\n", 1)
    broken.write_bytes(header + b"\n" + weights[:100])  # cut short in the weights
    with pytest.raises(ModelMismatchError, match="broken.cnn: cannot read model file"):
        load_synapse_model(broken)
    other = tmp_path / "other.model"
    other.write_bytes(b'{"format": "something-else"}\n')
    with pytest.raises(ModelMismatchError, match="unknown model format 'something-else'"):
        load_synapse_model(other)
    other.write_bytes(b"\x89HDF\r\n")
    with pytest.raises(ModelMismatchError,
                       match=r"other.model: cannot read model file \(no synapse model header"):
        load_synapse_model(other)


def test_training_volumes_are_checked(training_volumes):
    first, second = training_volumes
    voxel = (40.0, 8.0, 8.0)
    with pytest.raises(ValueError, match="at least one volume"):
        train_network([], voxel_size=voxel, parameters=SMALL)
    other = TrainingVolume(name="dataset 'b' layer 'labels'", em=second.em,
                           voxel_size=(50.0, 8.0, 8.0), targets=second.targets)
    with pytest.raises(ValueError, match=r"dataset 'b' layer 'labels': voxel size \(50.0, 8.0, "
                                         r"8.0\) nm differs from the common"):
        train_network([first, other], voxel_size=voxel, parameters=SMALL)
    bad = TrainingVolume(name="crop", em=second.em, voxel_size=voxel, targets=second.targets,
                         aux={"axons": second.targets})
    with pytest.raises(ValueError, match="crop: aux map 'axons' is not a head"):
        train_network([bad], voxel_size=voxel, parameters=SMALL)
    bad.aux = {"membrane": second.targets[:, :10]}
    with pytest.raises(ValueError, match=r"crop: aux map 'membrane' \(8, 10, 112\) must have"):
        train_network([bad], voxel_size=voxel, parameters=SMALL)
    # A head that no volume labels is left out of the network.
    plain = TrainingVolume(name="plain", em=second.em, voxel_size=voxel,
                           targets=second.targets, aux={"membrane": second.aux["membrane"]})
    model = train_network([plain], voxel_size=voxel,
                          parameters=CnnParameters(**{**SMALL.to_dict(), "iterations": 2,
                                                      "patch": 32}))
    assert model.heads == ("synapse", "membrane")
    assert model.training["heads_without_labels"] == ["vesicles", "mitochondria"]
    assert model.net.head.out_channels == 2


def test_real_volume_trains_the_heads_it_has_maps_for():
    """The VNC volume has synapse, mitochondria and membrane masks and no vesicle labels: the
    network gets three heads, and after 200 steps on x < 320 each ranks the held-out half."""
    with h5py.File(shared_file("vnc_sstem_train.h5"), "r") as f:
        raw = f["volumes/raw"][:]
        voxel_size = tuple(float(v) for v in f["volumes/raw"].attrs["resolution"])
        masks = {k: f[f"volumes/labels/{k}"][:] > 0
                 for k in ("synapse_mask", "mitochondria_mask", "membrane_mask")}
        sites = f["volumes/labels/synapse_ids_3d"][:]
    targets = clean_targets(masks["synapse_mask"].astype(np.int8), voxel_size=voxel_size,
                            ignore_band_nm=80.0)
    left = (slice(None), slice(None), slice(0, 320))
    volume = TrainingVolume(
        name="vnc x < 320", em=raw[left], voxel_size=voxel_size, targets=targets[left],
        sites=sites[left], aux={"mitochondria": masks["mitochondria_mask"][left].astype(np.int8),
                                "membrane": masks["membrane_mask"][left].astype(np.int8)})
    model = train_network([volume], voxel_size=voxel_size, parameters=CnnParameters(
        width=8, depth=2, patch=64, batch=6, iterations=200, learning_rate=3e-3, seed=1))
    assert model.heads == ("synapse", "mitochondria", "membrane")
    assert model.training["heads_without_labels"] == ["vesicles"]
    # The held-out half, read with the halo the blocks would have.
    maps = model.predict_maps(raw[:, :, 192:], core=(slice(None), slice(None), slice(128, 448)),
                              offset=(0, 0, 192))
    right = (slice(None), slice(None), slice(320, 640))
    aucs = {h: _auc(maps[h], masks[f"{h}_mask"][right]) for h in model.heads}
    assert aucs["synapse"] > 0.95 and aucs["membrane"] > 0.85, aucs
    assert aucs["mitochondria"] > 0.75, aucs
