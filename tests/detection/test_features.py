"""Feature channels: known answers on synthetic volumes, and blocks equal to the whole volume."""

import json

import h5py
import numpy as np
import pytest
import zarr
from scipy import ndimage

from detection.io.sources import iter_blocks
from detection.synapses.features import (
    CHANNEL_KINDS,
    FeatureSpec,
    compute_features,
    compute_features_block,
    compute_features_with_wide_gaussians,
    iter_feature_blocks,
    release_workspace,
    sigma_voxels,
    sym3_eigenvalues,
)

ANISOTROPIC = (50.0, 4.6, 4.6)
ISOTROPIC = (8.0, 8.0, 8.0)


def _channel(features, spec, name):
    return features[spec.channel_names().index(name)]


def _textured(shape, seed=0, dtype=np.float32):
    """Smooth random texture over 0..255, with enough structure for every channel."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), (0.7, 2.0, 2.0))
    noise = (noise - noise.min()) / (noise.max() - noise.min()) * 255
    return noise.astype(dtype)


def _coords(shape, voxel_size):
    """Physical coordinates (nm) of every voxel, centred on the volume."""
    return np.meshgrid(
        *[(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, voxel_size)], indexing="ij"
    )


def _interior(spec, voxel_size, shape):
    """Voxels further than the halo from every face, where the mirror extension does not reach."""
    halo = spec.halo_voxels(voxel_size)
    assert all(n > 2 * h for n, h in zip(shape, halo)), (shape, halo)
    return tuple(slice(h, n - h) for h, n in zip(halo, shape))


# --------------------------------------------------------------------------------------------
# Spec


def test_sigma_voxels_converts_per_axis():
    np.testing.assert_allclose(sigma_voxels(20, ANISOTROPIC), (0.4, 20 / 4.6, 20 / 4.6))
    np.testing.assert_allclose(sigma_voxels(16.0, ISOTROPIC), (2.0, 2.0, 2.0))
    with pytest.raises(ValueError):
        sigma_voxels(20, (50, 4.6))
    with pytest.raises(ValueError):
        sigma_voxels(20, (0, 4.6, 4.6))


def test_channel_names_match_channels():
    spec = FeatureSpec()
    names = spec.channel_names()
    assert len(names) == spec.n_channels == len(set(names))
    assert names == FeatureSpec().channel_names()  # deterministic
    features = compute_features(_textured((6, 20, 21)), voxel_size=ANISOTROPIC, spec=spec)
    assert features.shape == (spec.n_channels, 6, 20, 21)
    # by kind, then scale, then eigenvalue index
    assert names[0] == "gaussian@10nm"
    assert [n for n in names if n.startswith("gaussian@")] == [
        f"gaussian@{s:g}nm" for s in spec.scales_nm]
    assert names.index("hessian_ev0@40nm") + 1 == names.index("hessian_ev1@40nm")
    for kind in CHANNEL_KINDS:
        assert any(n.startswith(kind.split("_eigenvalues")[0]) for n in names), kind


def test_kind_scales_and_kinds_select_channels():
    spec = FeatureSpec(scales_nm=(12.5, 30.0), kinds=("hessian_eigenvalues", "gaussian"),
                       kind_scales_nm={"gaussian": [30]})
    assert spec.channel_names() == [
        "hessian_ev0@12.5nm", "hessian_ev1@12.5nm", "hessian_ev2@12.5nm",
        "hessian_ev0@30nm", "hessian_ev1@30nm", "hessian_ev2@30nm", "gaussian@30nm",
    ]
    assert spec.scales_for("structure_tensor_eigenvalues") == ()
    # per-kind scales must be among scales_nm
    with pytest.raises(ValueError, match="kind_scales_nm"):
        FeatureSpec(scales_nm=(10.0, 20.0), kind_scales_nm={"gaussian": (40.0,)})
    # the default subsets go with the default scales only: other scales get every kind
    assert FeatureSpec(scales_nm=(10.0, 20.0)).n_channels == 2 * 10
    default = FeatureSpec()
    assert default.scales_for("hessian_eigenvalues") == (10.0, 20.0, 40.0)
    assert default.scales_for("structure_tensor_eigenvalues") == (20.0,)
    assert default == FeatureSpec(kind_scales_nm={
        "hessian_eigenvalues": (10, 20, 40), "structure_tensor_eigenvalues": [20]})
    with pytest.raises(ValueError):
        FeatureSpec(kinds=("gaussian", "sobel"))
    with pytest.raises(ValueError):
        FeatureSpec(scales_nm=(10.0, -1.0))
    with pytest.raises(ValueError):
        FeatureSpec(dog_ratio=1.0)


def test_spec_round_trips_through_json():
    for spec in (
        FeatureSpec(),
        FeatureSpec(scales_nm=(7.0, 14.0), kinds=("gaussian", "structure_tensor_eigenvalues"),
                    dog_ratio=1.6, structure_tensor_ratio=3.0, truncate=4.0,
                    min_sigma_voxels=0.5, kind_scales_nm={"gaussian": (14.0,)}),
    ):
        data = json.loads(json.dumps(spec.to_dict()))
        again = FeatureSpec.from_dict(data)
        assert again == spec
        assert hash(again) == hash(spec)
        assert again.channel_names() == spec.channel_names()
    with pytest.raises(ValueError):
        FeatureSpec.from_dict({**FeatureSpec().to_dict(), "colour": "blue"})


def test_halo_grows_with_scale_and_shrinks_with_voxel_size():
    spec = FeatureSpec(scales_nm=(20.0,), kinds=("gaussian",))
    # 20 nm: sigma 0.4 voxel in z (radius int(1.2 + 0.5) = 1), 4.35 in y and x (radius 13)
    assert spec.halo_voxels(ANISOTROPIC) == (1, 13, 13)
    derivatives = FeatureSpec(scales_nm=(20.0,), kinds=("hessian_eigenvalues",))
    assert derivatives.halo_voxels(ANISOTROPIC) == (2, 14, 14)
    # below min_sigma_voxels an axis is not smoothed: only the difference reaches further
    assert FeatureSpec(scales_nm=(10.0,), kinds=("gradient_magnitude",)).halo_voxels(
        ANISOTROPIC)[0] == 1


# --------------------------------------------------------------------------------------------
# Known answers


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_any_dtype_gives_float32(dtype):
    volume = _textured((5, 24, 23)).astype(dtype)
    features = compute_features(volume, voxel_size=ANISOTROPIC)
    assert features.dtype == np.float32
    assert np.isfinite(features).all()
    reference = compute_features(volume.astype(np.float64), voxel_size=ANISOTROPIC)
    np.testing.assert_array_equal(features, reference)


@pytest.mark.parametrize("voxel_size", [ANISOTROPIC, ISOTROPIC])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_constant_volume(voxel_size, dtype):
    volume = np.full((7, 30, 31), 100, dtype=dtype)
    spec = FeatureSpec()
    features = compute_features(volume, voxel_size=voxel_size, spec=spec)
    for name, channel in zip(spec.channel_names(), features):
        expected = 100.0 if name.startswith("gaussian@") else 0.0
        np.testing.assert_allclose(channel, expected, atol=1e-9, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    ("voxel_size", "axis"),
    [(ANISOTROPIC, 2), (ANISOTROPIC, 1), (ANISOTROPIC, 0), (ISOTROPIC, 0), (ISOTROPIC, 2)],
)
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_gradient_of_ramp_is_its_slope_per_nm(voxel_size, axis, dtype):
    shape = (24, 60, 62)
    coords = _coords(shape, voxel_size)
    if dtype == np.uint16:
        # whole levels per voxel, so that integer rounding leaves an exact ramp
        slope = 3 / voxel_size[axis]
        volume = (1000 + 3 * np.indices(shape)[axis]).astype(dtype)
    else:
        slope = 0.25  # intensity per nm, whatever the voxel size along the axis
        volume = (1000 + slope * coords[axis]).astype(dtype)
    spec = FeatureSpec(scales_nm=(10.0, 20.0), kinds=("gradient_magnitude",
                                                      "laplacian_of_gaussian", "gaussian"))
    features = compute_features(volume, voxel_size=voxel_size, spec=spec)
    inner = _interior(spec, voxel_size, shape)
    for scale in (10, 20):
        grad = _channel(features, spec, f"gradient_magnitude@{scale}nm")[inner]
        np.testing.assert_allclose(grad, slope, rtol=2e-5)
        laplacian = _channel(features, spec, f"laplacian_of_gaussian@{scale}nm")[inner]
        np.testing.assert_allclose(laplacian, 0, atol=1e-6)
        # smoothing a ramp leaves it alone
        np.testing.assert_allclose(_channel(features, spec, f"gaussian@{scale}nm")[inner],
                                   volume[inner], rtol=1e-6)


@pytest.mark.parametrize(("voxel_size", "axis"), [(ANISOTROPIC, 2), (ANISOTROPIC, 0),
                                                  (ISOTROPIC, 1)])
def test_laplacian_and_hessian_of_parabola(voxel_size, axis):
    """x^2 (nm) has second derivative 2 per nm^2: exact for the differences used."""
    shape = (24, 60, 62) if voxel_size == ANISOTROPIC else (30, 32, 34)
    volume = _coords(shape, voxel_size)[axis] ** 2
    spec = FeatureSpec(scales_nm=(10.0, 30.0), kinds=("laplacian_of_gaussian",
                                                      "hessian_eigenvalues"))
    features = compute_features(volume, voxel_size=voxel_size, spec=spec)
    inner = _interior(spec, voxel_size, shape)
    for scale in (10, 30):
        np.testing.assert_allclose(
            _channel(features, spec, f"laplacian_of_gaussian@{scale}nm")[inner], 2.0, rtol=1e-5)
        ev = [_channel(features, spec, f"hessian_ev{i}@{scale}nm")[inner] for i in range(3)]
        np.testing.assert_allclose(ev[2], 2.0, rtol=1e-5)
        np.testing.assert_allclose(ev[0], 0.0, atol=1e-5)
        np.testing.assert_allclose(ev[1], 0.0, atol=1e-5)


def _hessian_at_centre(volume, voxel_size, scale):
    spec = FeatureSpec(scales_nm=(scale,), kinds=("hessian_eigenvalues",))
    features = compute_features(volume, voxel_size=voxel_size, spec=spec)
    centre = tuple(n // 2 for n in volume.shape)
    return features[(slice(None),) + centre]


@pytest.mark.parametrize("voxel_size", [ISOTROPIC, ANISOTROPIC])
def test_hessian_eigenvalues_tell_sheet_tube_and_blob(voxel_size):
    shape = (25, 81, 81) if voxel_size == ANISOTROPIC else (41, 41, 41)
    z, y, x = _coords(shape, voxel_size)
    width = 20.0  # nm: a membrane-like sheet, a tube, a blob, all bright on dark
    scale = 20.0

    # Sheet normal to x (sections cut across it, as membranes usually are).
    sheet = _hessian_at_centre(100 * np.exp(-0.5 * (x / width) ** 2), voxel_size, scale)
    assert sheet[0] < 0
    assert abs(sheet[1]) < 1e-3 * abs(sheet[0]) and abs(sheet[2]) < 1e-3 * abs(sheet[0])

    # Tube along z.
    tube = _hessian_at_centre(100 * np.exp(-0.5 * (x**2 + y**2) / width**2), voxel_size, scale)
    assert tube[0] <= tube[1] < 0
    np.testing.assert_allclose(tube[0], tube[1], rtol=1e-3)
    assert abs(tube[2]) < 1e-3 * abs(tube[0])

    # Blob (wide enough in z to be seen by 50 nm sections).
    blob_width = np.array([3.0 if voxel_size == ANISOTROPIC else 1.0, 1.0, 1.0]) * width * 2
    r2 = (z / blob_width[0]) ** 2 + (y / blob_width[1]) ** 2 + (x / blob_width[2]) ** 2
    blob = _hessian_at_centre(100 * np.exp(-0.5 * r2), voxel_size, scale)
    assert blob[0] <= blob[1] <= blob[2] < 0

    # A dark sheet flips the sign: one large positive eigenvalue.
    dark = _hessian_at_centre(-100 * np.exp(-0.5 * (x / width) ** 2), voxel_size, scale)
    assert dark[2] > 0 and abs(dark[0]) < 1e-3 * dark[2]


@pytest.mark.parametrize(("voxel_size", "axis"), [(ISOTROPIC, 2), (ANISOTROPIC, 1),
                                                  (ANISOTROPIC, 0)])
def test_structure_tensor_of_step_edge(voxel_size, axis):
    shape = (24, 60, 60)
    step = (_coords(shape, voxel_size)[axis] > 0).astype(np.uint8) * 200
    spec = FeatureSpec(scales_nm=(20.0,), kinds=("structure_tensor_eigenvalues",))
    features = compute_features(step, voxel_size=voxel_size, spec=spec)
    centre = tuple(n // 2 for n in shape)
    ev = features[(slice(None),) + centre]
    assert ev[2] > 0.1
    assert abs(ev[0]) < 1e-5 * ev[2] and abs(ev[1]) < 1e-5 * ev[2]
    assert (np.diff(features, axis=0) >= 0).all()


def test_difference_of_gaussians_is_band_between_scales():
    volume = _textured((9, 40, 41), dtype=np.float64)
    spec = FeatureSpec(scales_nm=(10.0, 25.0), kinds=("difference_of_gaussians",),
                       dog_ratio=1.6)
    features = compute_features(volume, voxel_size=ISOTROPIC, spec=spec)
    for channel, scale in zip(features, spec.scales_nm):
        fine = ndimage.gaussian_filter(volume, np.array(sigma_voxels(scale / 1.6, ISOTROPIC)),
                                       mode="reflect", truncate=3.0)
        coarse = ndimage.gaussian_filter(volume, np.array(sigma_voxels(scale, ISOTROPIC)),
                                         mode="reflect", truncate=3.0)
        np.testing.assert_allclose(channel, fine - coarse, atol=1e-4)


@pytest.mark.parametrize("voxel_size", [ISOTROPIC, ANISOTROPIC])
def test_gaussian_equals_scipy_reflect(voxel_size):
    volume = _textured((9, 50, 47), dtype=np.float64)
    spec = FeatureSpec(scales_nm=(6.0, 20.0, 45.0), kinds=("gaussian",))
    features = compute_features(volume, voxel_size=voxel_size, spec=spec)
    for channel, scale in zip(features, spec.scales_nm):
        sigma = np.array(sigma_voxels(scale, voxel_size))
        sigma[sigma < spec.min_sigma_voxels] = 0  # those axes are not smoothed
        expected = ndimage.gaussian_filter(volume, sigma, mode="reflect", truncate=3.0)
        np.testing.assert_allclose(channel, expected, rtol=1e-6, atol=1e-4)


def test_gradient_magnitude_equals_central_differences_of_smoothed():
    volume = _textured((12, 40, 39), dtype=np.float64)
    spec = FeatureSpec(scales_nm=(20.0,), kinds=("gradient_magnitude", "laplacian_of_gaussian"))
    features = compute_features(volume, voxel_size=ANISOTROPIC, spec=spec)
    smooth = ndimage.gaussian_filter(volume, sigma_voxels(20.0, ANISOTROPIC), mode="reflect",
                                     truncate=3.0)
    padded = np.pad(smooth, 1, mode="symmetric")
    inner = (slice(1, -1),) * 3
    grad2 = 0
    laplacian = 0
    for axis, h in enumerate(ANISOTROPIC):
        plus = np.roll(padded, -1, axis)[inner]
        minus = np.roll(padded, 1, axis)[inner]
        grad2 = grad2 + ((plus - minus) / (2 * h)) ** 2
        laplacian = laplacian + (plus - 2 * smooth + minus) / h**2
    np.testing.assert_allclose(features[0], np.sqrt(grad2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features[1], laplacian, rtol=1e-4, atol=1e-6)


def test_sym3_eigenvalues_match_eigvalsh():
    rng = np.random.default_rng(3)
    m = rng.standard_normal((20000, 3, 3))
    m = m + m.transpose(0, 2, 1)
    m[:100] = 0  # zero matrix
    m[100:200] = np.eye(3) * 7  # all equal
    m[200:300] = np.diag([1.0, 1.0, -2.0]) + 1e-6 * m[200:300]  # nearly repeated
    m[300:400] = np.diag([3.0, -1.0, 2.0])  # diagonal
    m[400:500] *= 1e-12  # far from 1 in both directions: no overflow or underflow
    m[500:600] *= 1e12
    ev = np.stack(sym3_eigenvalues(m[:, 0, 0], m[:, 1, 1], m[:, 2, 2], m[:, 0, 1],
                                   m[:, 0, 2], m[:, 1, 2]), axis=-1)
    expected = np.linalg.eigvalsh(m)
    scale = np.maximum(np.abs(expected).max(axis=1, keepdims=True), 1e-300)
    assert ev.dtype == np.float32
    assert (np.abs(ev - expected) / scale).max() < 5e-5
    assert (np.diff(ev, axis=1) >= 0).all()


# --------------------------------------------------------------------------------------------
# Blocks equal the whole volume


def _assert_channels_close(block, whole, names):
    """Equal to float32 rounding, channel by channel.

    Tolerance: the float64 smoothing sums in another order in a block than in the whole
    volume (BLAS tiles start elsewhere), ~1e-16 relative, and the structure-tensor products
    are smoothed in float32, ~1e-7 relative; values then round to float32. rtol 1e-5 with an
    atol of 1e-5 of the channel's largest magnitude covers that with a wide margin. For
    eigenvalues the scale is the largest magnitude of all three of the same matrix, as
    eigenvalue errors scale with the matrix norm (an eigenvalue that is zero everywhere, as
    across a single section, is only zero to that precision).
    """
    scale = {}
    for name, w in zip(names, whole):
        group = name.split("_ev")[0] + name.split("@")[1] if "_ev" in name else name
        scale[group] = max(scale.get(group, 0.0), float(np.abs(w).max()))
    for name, b, w in zip(names, block, whole):
        group = name.split("_ev")[0] + name.split("@")[1] if "_ev" in name else name
        np.testing.assert_allclose(b, w, rtol=1e-5, atol=1e-5 * scale[group], err_msg=name)


SMALL_SPEC = FeatureSpec(scales_nm=(10.0, 25.0), dog_ratio=2.5,
                         kind_scales_nm={"structure_tensor_eigenvalues": (10.0,)})


def _interior_box(box, halo, shape):
    return all(s.start >= h and s.stop + h <= n for s, h, n in zip(box, halo, shape))


@pytest.mark.parametrize(
    ("voxel_size", "shape", "block_shape"),
    [
        (ANISOTROPIC, (17, 100, 96), (5, 30, 27)),  # faces, edges, corners and interior
        (ANISOTROPIC, (17, 100, 96), (17, 33, 96)),  # slabs touching four faces
        (ANISOTROPIC, (17, 100, 96), (3, 100, 29)),
        (ANISOTROPIC, (17, 100, 96), (1, 1, 96)),  # single rows
        (ANISOTROPIC, (17, 100, 96), (17, 100, 96)),
        (ISOTROPIC, (40, 48, 50), (13, 17, 11)),
        (ISOTROPIC, (40, 48, 50), (40, 48, 50)),
    ],
)
def test_blocks_equal_whole_volume(voxel_size, shape, block_shape):
    spec = SMALL_SPEC
    volume = _textured(shape, seed=5, dtype=np.uint8)
    whole = compute_features(volume, voxel_size=voxel_size, spec=spec)
    halo = spec.halo_voxels(voxel_size)
    boxes = list(iter_blocks(shape, block_shape))
    if len(boxes) > 12:
        # a sample, but always with blocks whose halo is clipped nowhere and the far corner
        rng = np.random.default_rng(0)
        interior = [box for box in boxes if _interior_box(box, halo, shape)]
        if all(b + 2 * h < n for b, h, n in zip(block_shape, halo, shape)):
            assert interior
        boxes = interior[:3] + [boxes[i] for i in rng.choice(len(boxes), 8, replace=False)] + [
            boxes[-1]]
    for box in boxes:
        block = compute_features_block(volume, box, voxel_size=voxel_size, spec=spec)
        assert block.shape == (spec.n_channels,) + tuple(s.stop - s.start for s in box)
        assert block.dtype == np.float32
        _assert_channels_close(block, whole[(slice(None),) + box], spec.channel_names())


def test_default_spec_blocks_equal_whole_volume():
    spec = FeatureSpec()
    shape = (16, 140, 130)
    volume = _textured(shape, seed=2, dtype=np.uint8)
    whole = compute_features(volume, voxel_size=ANISOTROPIC, spec=spec)
    blocks = list(iter_feature_blocks(volume, voxel_size=ANISOTROPIC, spec=spec,
                                      block_shape=(9, 70, 65)))
    assert len(blocks) == 8
    for box, block in blocks:
        _assert_channels_close(block, whole[(slice(None),) + box], spec.channel_names())


class _ReadOnly:
    """A VolumeSource stand-in: shape and read(box) only."""

    def __init__(self, array):
        self.shape = array.shape
        self.voxel_size = ANISOTROPIC
        self._array = array
        self.reads = []

    def read(self, box):
        self.reads.append(box)
        return self._array[box].copy()


def test_block_sources_zarr_hdf5_and_read(tmp_path):
    spec = SMALL_SPEC
    volume = _textured((10, 60, 58), seed=1, dtype=np.uint16)
    whole = compute_features(volume, voxel_size=ANISOTROPIC, spec=spec)
    box = (slice(3, 8), slice(20, 45), slice(0, 30))
    z = zarr.open(str(tmp_path / "v.zarr"), mode="w", shape=volume.shape, chunks=(4, 16, 16),
                  dtype=volume.dtype)
    z[:] = volume
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = volume
    source = _ReadOnly(volume)
    with h5py.File(tmp_path / "v.h5", "r") as f:
        for src in (volume, z, f["raw"], source):
            block = compute_features_block(src, box, voxel_size=ANISOTROPIC, spec=spec)
            _assert_channels_close(block, whole[(slice(None),) + box], spec.channel_names())
    # the read is the box grown by the halo, clipped to the volume
    halo = spec.halo_voxels(ANISOTROPIC)
    assert source.reads[-1] == tuple(
        slice(max(0, s.start - h), min(n, s.stop + h))
        for s, h, n in zip(box, halo, volume.shape))
    # iter_feature_blocks falls back on the source's voxel size and tiles the volume
    count = 0
    for box, block in iter_feature_blocks(source, voxel_size=None, spec=spec,
                                          block_shape=(10, 32, 58)):
        _assert_channels_close(block, whole[(slice(None),) + box], spec.channel_names())
        count += 1
    assert count == 2


def test_empty_box_and_bad_box():
    volume = _textured((4, 20, 20))
    spec = SMALL_SPEC
    empty = compute_features_block(volume, (slice(1, 1), slice(0, 20), slice(0, 20)),
                                   voxel_size=ANISOTROPIC, spec=spec)
    assert empty.shape == (spec.n_channels, 0, 20, 20)
    with pytest.raises(ValueError):
        compute_features_block(volume, (slice(0, 5), slice(0, 20), slice(0, 20)),
                               voxel_size=ANISOTROPIC, spec=spec)
    with pytest.raises(ValueError):
        compute_features(volume[0], voxel_size=ANISOTROPIC, spec=spec)


def test_volume_thinner_than_kernels():
    """A single section, and a volume smaller than the kernels, mirror as scipy does."""
    volume = _textured((1, 9, 8), dtype=np.float64)
    spec = FeatureSpec(scales_nm=(40.0,), kinds=("gaussian", "hessian_eigenvalues",
                                                 "structure_tensor_eigenvalues"))
    features = compute_features(volume, voxel_size=ANISOTROPIC, spec=spec)
    assert np.isfinite(features).all()
    expected = ndimage.gaussian_filter(volume, sigma_voxels(40.0, ANISOTROPIC), mode="reflect",
                                       truncate=3.0)
    np.testing.assert_allclose(features[0], expected, rtol=1e-6)
    block = compute_features_block(volume, (slice(0, 1), slice(2, 5), slice(3, 8)),
                                   voxel_size=ANISOTROPIC, spec=spec)
    _assert_channels_close(block, features[:, :, 2:5, 3:8], spec.channel_names())


def test_out_argument_and_reused_scratch_give_the_same_channels():
    spec = SMALL_SPEC
    big = _textured((9, 70, 66), seed=3)
    small = _textured((4, 20, 31), seed=4)
    release_workspace()
    fresh_small = compute_features(small, voxel_size=ISOTROPIC, spec=spec)
    compute_features(big, voxel_size=ANISOTROPIC, spec=spec)  # leaves larger scratch behind
    out = np.full((spec.n_channels,) + small.shape, np.nan, dtype=np.float32)
    result = compute_features(small, voxel_size=ISOTROPIC, spec=spec, out=out)
    assert result is out
    np.testing.assert_array_equal(out, fresh_small)
    box = (slice(1, 3), slice(5, 15), slice(0, 31))
    block_out = np.empty((spec.n_channels, 2, 10, 31), dtype=np.float32)
    compute_features_block(small, box, voxel_size=ISOTROPIC, spec=spec, out=block_out)
    _assert_channels_close(block_out, fresh_small[(slice(None),) + box], spec.channel_names())
    with pytest.raises(ValueError, match="out must be"):
        compute_features(small, voxel_size=ISOTROPIC, spec=spec, out=out[:, :2])
    with pytest.raises(TypeError):
        compute_features(small.astype(complex), voxel_size=ISOTROPIC, spec=spec)


@pytest.mark.parametrize("voxel_size", [ANISOTROPIC, ISOTROPIC])
def test_strided_block_equals_the_whole_volume_sampled(voxel_size):
    spec = FeatureSpec()
    shape = (18, 120, 110)
    volume = _textured(shape, seed=6, dtype=np.uint8)
    whole = compute_features(volume, voxel_size=voxel_size, spec=spec)
    for box, stride in [((slice(3, 14), slice(40, 97), slice(0, 110)), (1, 2, 2)),
                        ((slice(0, 18), slice(7, 30), slice(50, 61)), (3, 2, 4))]:
        block = compute_features_block(volume, box, voxel_size=voxel_size, spec=spec,
                                       stride=stride)
        sampled = tuple(slice(b.start, b.stop, s) for b, s in zip(box, stride))
        assert block.shape == (spec.n_channels,) + tuple(len(range(shape[i])[sampled[i]])
                                                         for i in range(3))
        _assert_channels_close(block, whole[(slice(None),) + sampled], spec.channel_names())


def test_wide_gaussians_cover_the_wide_box_from_the_same_pass():
    spec = FeatureSpec()
    shape = (20, 150, 140)
    volume = _textured(shape, seed=7, dtype=np.uint8)
    whole = compute_features(volume, voxel_size=ANISOTROPIC, spec=spec)
    names = spec.channel_names()
    wanted = ["gaussian@20nm", "gaussian@10nm", "gaussian@40nm"]
    box = (slice(6, 14), slice(50, 100), slice(60, 100))
    wide_box = (slice(2, 20), slice(20, 130), slice(0, 120))  # clipped at two faces
    source = _ReadOnly(volume)
    channels, wide = compute_features_with_wide_gaussians(
        source, box, wide_box, wanted, voxel_size=ANISOTROPIC, spec=spec, stride=(1, 2, 2))
    _assert_channels_close(channels, whole[(slice(None), box[0], slice(50, 100, 2),
                                            slice(60, 100, 2))], names)
    assert wide.shape == (3, 18, 110, 120)
    for row, name in enumerate(wanted):
        np.testing.assert_allclose(wide[row], whole[(names.index(name),) + wide_box],
                                   rtol=1e-6, atol=1e-4)
    # one read: the box with the features' halo and the wide box with the Gaussians' reach
    assert len(source.reads) == 1
    with pytest.raises(ValueError, match="'hessian_ev0@10nm' is not a gaussian channel"):
        compute_features_with_wide_gaussians(volume, box, wide_box, ["hessian_ev0@10nm"],
                                             voxel_size=ANISOTROPIC, spec=spec)
    with pytest.raises(ValueError, match="does not contain the box"):
        compute_features_with_wide_gaussians(volume, wide_box, box, wanted,
                                             voxel_size=ANISOTROPIC, spec=spec)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("stride", [(1, 3, 3), (2, 1, 4), (3, 2, 2)])
def test_strided_smoothing_equals_full_smoothing_sampled(dtype, stride):
    """Smoothing to every ``stride`` voxel alone (as the structure tensor and a DoG's finer
    Gaussian are) gives the full-resolution smoothing at those voxels, up to rounding, also
    where the region reaches into the mirror extension and on an unsmoothed axis."""
    from detection.synapses.features import _kernel, _smooth, _Workspace

    volume = np.stack([_textured((9, 70, 61), seed=seed) for seed in (8, 9)]).astype(dtype)
    lo, hi = (-2, -5, 3), (9, 66, 67)
    for scale in (5.0, 40.0):
        kernel = _kernel(scale, ANISOTROPIC, FeatureSpec())
        full = _smooth(volume, kernel, lo, hi, _Workspace(), ("a", "b"), dtype).copy()
        strided = _smooth(volume, kernel, lo, hi, _Workspace(), ("a", "b"), dtype, stride)
        expected = full[(Ellipsis,) + tuple(slice(None, None, s) for s in stride)]
        assert strided.shape == expected.shape
        np.testing.assert_allclose(strided, expected, rtol=1e-12 if dtype == np.float64 else 1e-5,
                                   atol=1e-3 if dtype == np.float32 else 1e-10)
