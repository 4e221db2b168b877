"""The synapse network's heads, masked and weighted loss, augmentation, devices, multi-head blocks
and model file versions."""

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from detection.blockwise import block_maps, predict_map_layers, with_halo
from detection.errors import InputError
from detection.io.sources import iter_blocks
from detection.synapses import cnn
from detection.synapses.classify import ModelMismatchError
from detection.synapses.cnn import (
    HEADS,
    Augmentation,
    CnnParameters,
    SynapseCnn,
    augment_patch,
    instance_weights,
    masked_loss,
    select_device,
)
from detection.synapses.model_files import load_synapse_model
from detection.synapses.resample import ResampledModel

SMALL = CnnParameters(width=4, depth=2, context_sections=1)


def _untrained(voxel_size=(40.0, 5.0, 5.0), parameters=SMALL, seed=3, device="cpu",
               spread=50.0):
    """Random weights and batch-norm statistics that are not the identity, so every layer's
    arithmetic shows in the output; the last layer's weights are multiplied by ``spread`` to
    spread the probabilities over (0, 1)."""
    torch.manual_seed(seed)
    model = SynapseCnn(voxel_size=voxel_size, parameters=parameters, mean=120.0, std=40.0,
                       device=device)
    for module in model.net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.01, 0.01)
            module.running_var.uniform_(0.8, 1.2)
    with torch.no_grad():
        model.net.head.weight.mul_(spread)
    model.net.eval()
    return model


# -- heads and the loss ------------------------------------------------------------------
def test_a_head_without_labels_gets_no_gradient():
    torch.manual_seed(0)
    net = cnn._UNet2d(3, 4, 2, heads=len(HEADS))
    images = torch.randn(2, 3, 32, 32)
    targets = torch.from_numpy(np.random.default_rng(0).integers(0, 2, (2, 4, 32, 32))
                               .astype(np.int8))
    targets[:, 1] = -1              # no vesicle labels in this batch
    targets[0, 2] = -1              # mitochondria labelled on the second patch only
    targets[:, 3, :16] = -1         # membrane on half of each patch
    loss, parts = masked_loss(net(images), targets, torch.ones(2, 32, 32), aux_weight=0.5)
    loss.backward()
    assert sorted(parts) == [0, 2, 3]
    grad = net.head.weight.grad[:, :, 0, 0]
    assert torch.all(grad[1] == 0) and net.head.bias.grad[1] == 0
    assert all(grad[h].abs().sum() > 0 for h in (0, 2, 3))
    # Each head's part is its cross-entropy over its labelled pixels alone.
    with torch.no_grad():
        logits = net(images)
    expected = F.binary_cross_entropy_with_logits(logits[:, 3, 16:],
                                                  targets[:, 3, 16:].float())
    assert float(parts[3]) == pytest.approx(float(expected), rel=1e-5)
    expected = F.binary_cross_entropy_with_logits(logits[1, 2], targets[1, 2].float())
    assert float(parts[2]) == pytest.approx(float(expected), rel=1e-5)
    expected = float(parts[0] + 0.5 * (parts[2] + parts[3]))
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_small_synapses_weigh_as_much_as_large_ones():
    labels = np.zeros((4, 24, 24), np.int8)
    labels[1, 2:4, 2:4] = 1               # 4 pixels in one section
    labels[0:3, 10:16, 10:16] = 1         # 108 pixels over three sections
    labels[0:2, 20:23, 2:12] = 1          # 60 pixels
    labels[3, 20:, 20:] = -1
    weights = instance_weights(labels, max_weight=8.0)
    # Median size 60: the small one 60 / 4 = 15, bounded to 8; larger ones keep 1.
    assert weights[1, 2, 2] == 8.0
    assert weights[1, 12, 12] == 1.0 and weights[0, 21, 5] == 1.0
    assert weights[2, 20, 20] == 1.0 and weights[3, 22, 22] == 1.0  # negatives, ignored
    # Given site ids group pixels as they say: the 60-pixel block as synapses of 18 and 42.
    sites = np.zeros(labels.shape, np.uint32)
    sites[0:2, 20:23, 2:5], sites[0:2, 20:23, 5:12] = 5, 6
    by_site = instance_weights(labels, sites=sites)  # sizes 4, 108, 18, 42: median 30
    assert by_site[1, 2, 2] == pytest.approx(30 / 4)
    assert by_site[1, 21, 3] == pytest.approx(30 / 18) and by_site[1, 21, 8] == 1.0

    # Under the loss, the small synapse's share of the gradient grows over plain BCE's.
    logits = torch.zeros(1, 1, 4, 24, 24).reshape(4, 1, 24, 24).requires_grad_()
    targets = torch.from_numpy(labels)[:, None]
    shares = []
    for w in (torch.ones(4, 24, 24), torch.from_numpy(weights)):
        logits.grad = None
        masked_loss(logits, targets, w)[0].backward()
        g = logits.grad[:, 0].abs()
        shares.append(float(g[1, 2:4, 2:4].sum() / g[torch.from_numpy(labels == 1)].sum()))
    plain, weighted = shares
    assert plain == pytest.approx(4 / 172)
    assert weighted == pytest.approx(32 / (32 + 108 + 60))
    assert weighted > 5 * plain


# -- augmentation ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_augmented_patches_keep_their_shapes_and_their_labels(seed):
    rng = np.random.default_rng(seed)
    m, p = 2, 20
    pattern = rng.integers(0, 2, size=(p, p)).astype(np.int8)
    image = rng.normal(size=(3, p + 2 * m, p + 2 * m)).astype(np.float32)
    image[1, m:-m, m:-m] = pattern
    labels = np.stack([pattern, 1 - pattern, -np.ones_like(pattern), pattern])
    weights = pattern.astype(np.float32) + 1
    clean = Augmentation(noise_probability=0.0, blur_probability=0.0, missing_probability=0.0,
                         misalign_probability=1.0, misalign_pixels=m)
    out, out_labels, out_weights = augment_patch(image, labels, weights, rng, clean)
    assert out.shape == (3, p, p) and out.dtype == np.float32
    assert out_labels.shape == (4, p, p) and out_weights.shape == (p, p)
    # The middle section follows its labels through turns, flips, contrast and brightness; the
    # labels and weights are turned together.
    assert np.corrcoef(out[1].ravel(), out_labels[0].ravel())[0, 1] == pytest.approx(1.0)
    np.testing.assert_array_equal(out_labels[1], 1 - out_labels[0])
    np.testing.assert_array_equal(out_weights, out_labels[0] + 1)
    # A blank neighbour section: one grey value.
    blank = Augmentation(noise_probability=0.0, blur_probability=0.0, missing_probability=1.0,
                         misalign_probability=0.0, misalign_pixels=m)
    out = augment_patch(image, labels, weights, rng, blank)[0]
    assert sum(float(np.ptp(out[c])) == 0.0 for c in (0, 2)) == 1 and out[1].std() > 0.1
    # Noise and blur change the pixels, not the shapes.
    rough = Augmentation(noise_probability=1.0, blur_probability=1.0, missing_probability=0.0,
                         misalign_probability=0.0, misalign_pixels=m)
    out, out_labels, _ = augment_patch(image, labels, weights, rng, rough)
    assert out.shape == (3, p, p)
    assert np.corrcoef(out[1].ravel(), out_labels[0].ravel())[0, 1] < 0.999
    with pytest.raises(InputError, match="must be 20 x 20"):
        augment_patch(image, labels[:, 1:], weights, rng, clean)


# -- blocks ------------------------------------------------------------------------------
@pytest.mark.parametrize("voxel_size", [(40.0, 5.0, 5.0), (50.0, 4.6, 4.6)])
def test_blocks_give_every_head_of_the_whole_volume(voxel_size):
    model = _untrained(voxel_size=voxel_size)
    rng = np.random.default_rng(2)
    volume = rng.integers(0, 256, size=(6, 142, 126)).astype(np.uint8)
    whole = model.predict_maps(volume)
    assert list(whole) == list(HEADS)
    assert all(m.shape == volume.shape and m.dtype == np.float32 for m in whole.values())
    np.testing.assert_array_equal(whole["synapse"], model.predict_region(volume))
    halo = model.halo_voxels()
    worst = 0.0
    for box in iter_blocks(volume.shape, (4, 40, 36)):
        outer, core = with_halo(box, halo, volume.shape)
        part = model.predict_maps(volume[outer], core=core, offset=tuple(s.start for s in outer))
        worst = max(worst, max(np.abs(part[h] - whole[h][box]).max() for h in HEADS))
    assert worst < 1e-5
    for h in HEADS:  # the comparison is not between constants
        assert whole[h].std() > 0.01, h


def test_vesicle_map_is_written_next_to_the_synapse_probability():
    model = _untrained(voxel_size=(40.0, 8.0, 8.0))
    rng = np.random.default_rng(4)
    volume = rng.integers(0, 256, size=(5, 90, 70)).astype(np.uint8)
    whole = model.predict_maps(volume)
    outputs = {"synapse": np.zeros(volume.shape, np.uint8),
               "vesicles": np.zeros(volume.shape, np.float32)}
    predict_map_layers(volume, model, outputs=outputs, block_shape=(2, 32, 24))
    assert np.abs(outputs["synapse"].astype(int) - np.rint(whole["synapse"] * 255)).max() <= 1
    assert np.abs(outputs["vesicles"] - whole["vesicles"]).max() < 1e-5
    box = (slice(1, 3), slice(32, 64), slice(24, 48))
    one = block_maps(volume, model, box, heads=("vesicles", "synapse"))
    assert list(one) == ["vesicles", "synapse"] and one["vesicles"].dtype == np.uint8
    np.testing.assert_array_equal(one["vesicles"], np.rint(whole["vesicles"][box] * 255))
    one_head = SynapseCnn(voxel_size=(40.0, 8.0, 8.0), parameters=CnnParameters(
        width=4, depth=2, heads=("synapse",)), mean=0.0, std=1.0, device="cpu")
    with pytest.raises(InputError, match="no 'vesicles' head.*trained with vesicle labels"):
        block_maps(volume, one_head, box, heads=("synapse", "vesicles"))


# -- devices -----------------------------------------------------------------------------
def test_device_is_chosen_by_the_environment(monkeypatch):
    monkeypatch.delenv(cnn.DEVICE_VARIABLE, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device() == torch.device("cuda")
    monkeypatch.setenv(cnn.DEVICE_VARIABLE, "cpu")
    assert select_device() == torch.device("cpu")
    assert _untrained().device == torch.device("cpu")
    monkeypatch.setenv(cnn.DEVICE_VARIABLE, "CUDA")
    assert select_device() == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")  # a caller's choice comes first
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CONNECTOME_DEVICE 'cuda': CUDA is not available"):
        select_device()
    monkeypatch.setenv(cnn.DEVICE_VARIABLE, "gpu")
    with pytest.raises(RuntimeError):  # torch's own refusal of an unknown device name
        select_device()
    monkeypatch.setenv(cnn.DEVICE_VARIABLE, "meta")
    with pytest.raises(InputError, match="CONNECTOME_DEVICE 'meta': expected 'cpu' or 'cuda'"):
        select_device()


CUDA_TOLERANCE = 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA is absent: the CPU / CUDA comparison needs a GPU and a CUDA "
                           "build of torch")
def test_cuda_gives_the_cpu_probabilities(tmp_path):
    # Logits of a few units, as a trained network's: a spread of 50 would magnify float
    # rounding 50 times.
    model = _untrained(voxel_size=(50.0, 4.6, 4.6), parameters=CnnParameters(width=8, depth=3),
                       spread=5.0)
    path = model.save(tmp_path / "m.cnn")
    on_gpu = SynapseCnn.load(path, device="cuda")
    assert next(on_gpu.net.parameters()).is_cuda
    volume = np.random.default_rng(5).integers(0, 256, size=(5, 300, 260)).astype(np.uint8)
    cpu, gpu = model.predict_maps(volume), on_gpu.predict_maps(volume)
    for head in HEADS:
        assert np.abs(cpu[head] - gpu[head]).max() < CUDA_TOLERANCE, head
    # The file written from the GPU holds CPU tensors and loads anywhere.
    again = SynapseCnn.load(on_gpu.save(tmp_path / "g.cnn"), device="cpu")
    np.testing.assert_array_equal(again.predict_region(volume), cpu["synapse"])


# -- files -------------------------------------------------------------------------------
def test_version_2_files_keep_the_heads(tmp_path):
    parameters = CnnParameters(width=4, depth=2, heads=("synapse", "mitochondria", "membrane"))
    model = _untrained(voxel_size=(40.0, 8.0, 8.0), parameters=parameters)
    path = model.save(tmp_path / "three.cnn")
    header = json.loads(path.read_bytes().split(b"\n", 1)[0])
    assert header["version"] == 2 and header["heads"] == ["synapse", "mitochondria", "membrane"]
    loaded = load_synapse_model(path, voxel_size=(40.0, 8.0, 8.0))
    assert loaded.heads == ("synapse", "mitochondria", "membrane")
    assert loaded.parameters == parameters
    volume = np.random.default_rng(6).integers(0, 256, size=(3, 64, 64)).astype(np.uint8)
    a, b = model.predict_maps(volume), loaded.predict_maps(volume)
    assert list(a) == list(b) == list(parameters.heads)
    for head in parameters.heads:
        np.testing.assert_array_equal(a[head], b[head])


def test_version_1_files_load_as_a_one_head_network(tmp_path):
    one_head = CnnParameters(width=4, depth=2, heads=("synapse",))
    model = _untrained(voxel_size=(40.0, 8.0, 8.0), parameters=one_head)
    # A file as version 1 wrote it: no heads, none of the later parameters.
    old = {k: v for k, v in one_head.to_dict().items()
           if k not in ("heads", "aux_weight", "max_instance_weight", "augmentation")}
    header = {"format": "connectome-synapse-cnn", "version": 1, "voxel_size": [40.0, 8.0, 8.0],
              "parameters": old, "mean": 120.0, "std": 40.0, "training": {"iterations": 3},
              "calibration": None}
    weights = model.save(tmp_path / "new.cnn").read_bytes().split(b"\n", 1)[1]
    path = tmp_path / "old.cnn"
    path.write_bytes(json.dumps(header).encode() + b"\n" + weights)
    loaded = load_synapse_model(path, voxel_size=(40.0, 8.0, 8.0))
    assert loaded.heads == ("synapse",) and loaded.training == {"iterations": 3}
    volume = np.random.default_rng(7).integers(0, 256, size=(3, 64, 64)).astype(np.uint8)
    np.testing.assert_array_equal(loaded.predict_region(volume), model.predict_region(volume))
    assert list(loaded.predict_maps(volume)) == ["synapse"]
    # Four heads' weights under a version-1 header do not make its network.
    four = _untrained(voxel_size=(40.0, 8.0, 8.0)).save(tmp_path / "four.cnn")
    path.write_bytes(json.dumps(header).encode() + b"\n" + four.read_bytes().split(b"\n", 1)[1])
    with pytest.raises(ModelMismatchError, match="old.cnn: the header and weights do not make"):
        load_synapse_model(path)


def test_heads_are_checked():
    with pytest.raises(InputError, match="expected 'synapse' first"):
        CnnParameters(heads=("vesicles", "synapse"))
    with pytest.raises(InputError, match="expected 'synapse' first"):
        CnnParameters(heads=("synapse", "axons"))


def test_prediction_runs_the_trained_function():
    """Folded batch norms and the channels-last layout change the arithmetic's order only."""
    model = _untrained(voxel_size=(40.0, 8.0, 8.0), parameters=CnnParameters(width=4, depth=3))
    sections = np.random.default_rng(8).normal(size=(3, 3, 96, 80)).astype(np.float32)
    fast = model.predict_network_maps(sections)
    with torch.inference_mode():
        halo = model.halo_pixels
        padded = np.pad(sections, ((0, 0), (0, 0), (halo, halo), (halo, halo)), mode="symmetric")
        plain = torch.sigmoid(model.net(torch.from_numpy(padded)))[:, :, halo:-halo, halo:-halo]
    assert fast.shape == (3, 4, 96, 80)
    assert np.abs(fast - plain.numpy()).max() < 1e-5
    assert plain.numpy().std() > 0.01


def test_maps_at_another_pixel_follow_the_probability():
    """A network applied to data of another pixel (ResampledModel) gives every head's map the
    way it gives the probability, block by block."""
    model = _untrained(voxel_size=(40.0, 8.0, 8.0))
    wrapped = ResampledModel(model, (40.0, 7.0, 7.0))
    volume = np.random.default_rng(9).integers(0, 256, size=(4, 120, 100)).astype(np.uint8)
    whole = wrapped.predict_maps(volume)
    assert list(whole) == list(HEADS)
    np.testing.assert_array_equal(whole["synapse"], wrapped.predict_region(volume))
    outputs = {h: np.zeros(volume.shape, np.float32) for h in ("vesicles", "membrane")}
    predict_map_layers(volume, wrapped, outputs=outputs, block_shape=(2, 48, 40))
    for head, out in outputs.items():
        assert np.abs(out - whole[head]).max() < 1e-5, head
        assert whole[head].std() > 0.01
