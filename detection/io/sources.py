"""Block-readable volume sources: TIFF, HDF5, zarr / OME-Zarr and Neuroglancer precomputed.

Every source opens lazily: opening reads only metadata (and validates it), and
:meth:`VolumeSource.read` reads the sub-box it is asked for, so volumes far larger than memory
can be copied block by block::

    with open_volume("stack.h5", dataset="volumes/raw") as src:
        for box in iter_blocks(src.shape, (64, 1024, 1024)):
            block = src.read(box)

Arrays are (z, y, x); voxel sizes are nanometres as (z, y, x) floats, or None where the file
does not state them. A voxel size that a file states but that is not usable (not three finite
numbers from :data:`VOXEL_SIZE_MIN_NM` to :data:`VOXEL_SIZE_MAX_NM`) is an error naming the file
and the attribute, unless the caller gives the voxel size (``voxel_size=``), which then
overrides it. A chunk missing from a zarr or precomputed volume is an error naming the chunk,
unless the caller asks for missing chunks to read as the fill value (``fill_missing=True``).
A source is not safe for concurrent reads from several threads; open one per thread instead.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import h5py
import numpy as np
import tifffile
import zarr

from detection.errors import InputError
from detection.io.text import format_number, format_numbers

logger = logging.getLogger(__name__)

FORMATS = ("tiff", "tiff-folder", "hdf5", "zarr", "precomputed")

Box = tuple[slice, slice, slice]

_TIFF_SUFFIXES = (".tif", ".tiff")
_HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5", ".n5h5")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_GZIP_MAGIC = b"\x1f\x8b"

# Length units found in ImageJ and OME-Zarr metadata, in nanometres.
_UNIT_NM = {
    "nm": 1.0,
    "nanometer": 1.0,
    "nanometre": 1.0,
    "um": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "\\u00b5m": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "millimeter": 1e6,
    "millimetre": 1e6,
    "cm": 1e7,
    "centimeter": 1e7,
    "m": 1e9,
    "meter": 1e9,
    "metre": 1e9,
    "angstrom": 0.1,
    "å": 0.1,
    "pm": 1e-3,
    "picometer": 1e-3,
}


class VolumeFormatError(InputError):
    """Bad or unreadable input.

    The message always names the file, and the dataset, page or field where relevant.
    """


# --------------------------------------------------------------------------------------------
# Voxel sizes

#: Bounds of every voxel size this project accepts, in nm per axis: from a femtometre (far
#: below any microscope) to a millimetre (far above any section).
VOXEL_SIZE_MIN_NM = 1e-6
VOXEL_SIZE_MAX_NM = 1e6


def voxel_size_problem(values) -> str | None:
    """Why ``values`` is not a usable (z, y, x) voxel size in nm, or None when it is."""
    try:
        numbers = [float(v) for v in np.asarray(values, dtype=object).reshape(-1)]
    except (TypeError, ValueError):
        return "not numbers"
    if len(numbers) != 3:
        return f"{len(numbers)} values instead of 3 (z, y, x)"
    for axis, number in zip("zyx", numbers):
        if math.isnan(number):
            return f"{axis} is not a number"
        if math.isinf(number):
            return f"{axis} is infinite"
        if number <= 0:
            return f"{axis} is not positive"
        if number < VOXEL_SIZE_MIN_NM:
            return f"{axis} is below {format_number(VOXEL_SIZE_MIN_NM)} nm"
        if number > VOXEL_SIZE_MAX_NM:
            return f"{axis} is above {format_number(VOXEL_SIZE_MAX_NM)} nm"
    return None


VOXEL_SIZE_RULE = (
    f"each of z, y, x must be a finite number from {format_number(VOXEL_SIZE_MIN_NM)} to "
    f"{format_number(VOXEL_SIZE_MAX_NM)} nm"
)


def validate_voxel_size(values, *, what: str = "voxel size") -> tuple[float, float, float]:
    """``values`` as a (z, y, x) tuple of floats in nm, or ValueError saying what is wrong.

    Raises
    ------
    ValueError
        Not three finite numbers within [VOXEL_SIZE_MIN_NM, VOXEL_SIZE_MAX_NM]; the message
        names ``what`` and the values as plain text.
    """
    problem = voxel_size_problem(values)
    if problem is not None:
        raise InputError(
            f"{what} {format_numbers(values)} nm is not usable ({problem}): {VOXEL_SIZE_RULE}"
        )
    return tuple(float(v) for v in np.asarray(values, dtype=object).reshape(-1))


def voxel_size_argument(text: str) -> float:
    """argparse ``type`` of one ``--voxel-size`` value: a finite number of nm within bounds."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (math.isfinite(value) and VOXEL_SIZE_MIN_NM <= value <= VOXEL_SIZE_MAX_NM):
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a voxel size: {VOXEL_SIZE_RULE}") from None
    return value


def _settle_voxel_size(where: str, attribute: str, stated, problem: str | None, given):
    """The voxel size a source reports, from what the file states and what the caller gives.

    ``stated``: the file's values (None when it states none); ``problem``: why they could not
    even be parsed. Returns ``(voxel_size, file_voxel_size, note)``: the voxel size to use,
    the file's own when usable, and (when ``given`` overrides an unusable statement) a
    sentence saying so.
    """
    shown = format_numbers(stated) if stated is not None else ""
    if problem is None and stated is not None:
        problem = voxel_size_problem(stated)
    message = None
    if problem is not None:
        message = (f"{where}: {attribute} {shown + ' ' if shown else ''}is not a usable voxel "
                   f"size ({problem}; {VOXEL_SIZE_RULE})")
    file_voxel_size = None
    if stated is not None and message is None:
        file_voxel_size = tuple(float(v) for v in np.asarray(stated, dtype=object).reshape(-1))
    if given is not None:
        try:
            given = validate_voxel_size(given, what="the given voxel size")
        except ValueError as exc:
            raise VolumeFormatError(f"{where}: {exc}") from None
        note = None if message is None else f"{message}; overridden by the given voxel size"
        return given, file_voxel_size, note
    if message is not None:
        raise VolumeFormatError(
            f"{message}. Give the voxel size (z, y, x in nm) to override what the file states"
        )
    return file_voxel_size, file_voxel_size, None


# --------------------------------------------------------------------------------------------
# Boxes


def iter_blocks(shape: Sequence[int], block_shape: Sequence[int]) -> Iterator[Box]:
    """Boxes tiling a volume in C order (z slowest); boxes at the far edges are clipped.

    Parameters
    ----------
    shape : (3,) ints
        Volume shape (z, y, x).
    block_shape : (3,) ints
        Block shape (z, y, x), each > 0.

    Yields
    ------
    tuple of 3 slices
        Half-open box ``(slice(z0, z1), slice(y0, y1), slice(x0, x1))``.
    """
    shape = tuple(int(n) for n in shape)
    block_shape = tuple(int(n) for n in block_shape)
    if len(shape) != 3 or len(block_shape) != 3:
        raise InputError(f"shape and block_shape must have 3 entries, got {shape}, {block_shape}")
    if any(b <= 0 for b in block_shape):
        raise InputError(f"block_shape must be positive, got {block_shape}")
    if any(n < 0 for n in shape):
        raise InputError(f"shape must be non-negative, got {shape}")
    for z0 in range(0, shape[0], block_shape[0]):
        for y0 in range(0, shape[1], block_shape[1]):
            for x0 in range(0, shape[2], block_shape[2]):
                yield (
                    slice(z0, min(z0 + block_shape[0], shape[0])),
                    slice(y0, min(y0 + block_shape[1], shape[1])),
                    slice(x0, min(x0 + block_shape[2], shape[2])),
                )


def normalize_box(box, shape: Sequence[int]) -> Box:
    """Resolve a box of 3 slices against ``shape``: explicit, in bounds, step 1.

    ``None`` start/stop mean the volume edge. Out-of-range or reversed bounds and steps other
    than 1 raise ValueError: a box that does not fit is a caller's bug, not something to clip.
    """
    if not isinstance(box, tuple) or len(box) != 3 or not all(isinstance(s, slice) for s in box):
        raise InputError(f"box must be a tuple of 3 slices (z, y, x), got {box!r}")
    out = []
    for axis, (s, n) in enumerate(zip(box, shape)):
        if s.step not in (None, 1):
            raise InputError(f"box step must be 1, got {s!r} on axis {axis}")
        start = 0 if s.start is None else int(s.start)
        stop = int(n) if s.stop is None else int(s.stop)
        if not 0 <= start <= stop <= n:
            raise InputError(f"box {box!r} does not fit in shape {tuple(shape)} (axis {axis})")
        out.append(slice(start, stop))
    return tuple(out)


def _box_shape(box: Box) -> tuple[int, int, int]:
    return tuple(s.stop - s.start for s in box)


def _box_text(box: Box) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in box) + "]"


def _region_text(box: Box) -> str:
    return ", ".join(f"{axis} {s.start}:{s.stop}" for axis, s in zip("zyx", box))


def _native(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype


def _check_numeric(dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise VolumeFormatError(
            f"{where}: data type {dtype} is not supported (need bool, integer or float)"
        )
    return _native(dtype)


# --------------------------------------------------------------------------------------------
# Base class


class VolumeSource(ABC):
    """A 3-D volume on disk, read box by box.

    Attributes
    ----------
    path : str
        File or folder the volume was opened from.
    shape : (3,) tuple of int
        Volume shape (z, y, x).
    dtype : numpy.dtype
        Data type of the arrays :meth:`read` returns (native byte order).
    voxel_size : (3,) tuple of float or None
        Voxel size in nm (z, y, x): the one the caller gave, else the one the file states
        (None where it states none).
    file_voxel_size : (3,) tuple of float or None
        What the file states, when that is a usable voxel size.
    voxel_size_note : str or None
        When a given voxel size replaced an unusable statement of the file: what was wrong.
    chunks : (3,) tuple of int or None
        Native storage chunking (z, y, x); reading boxes aligned to it is cheapest.
    dataset : str or None
        Internal path (HDF5 dataset, zarr array, precomputed scale key) where one applies.
    format : str
        One of :data:`FORMATS`.
    """

    format: str = ""

    def __init__(self, path, *, shape, dtype, voxel_size=None, chunks=None, dataset=None,
                 file_voxel_size=..., voxel_size_note=None):
        self.path = str(path)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = _native(dtype)
        self.voxel_size = None if voxel_size is None else tuple(float(v) for v in voxel_size)
        self.file_voxel_size = self.voxel_size if file_voxel_size is ... else file_voxel_size
        self.voxel_size_note = voxel_size_note
        self.chunks = None if chunks is None else tuple(int(c) for c in chunks)
        self.dataset = dataset

    @property
    def nbytes(self) -> int:
        """Size of the whole volume in memory, in bytes."""
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, box) -> np.ndarray:
        """Read one box of the volume.

        Parameters
        ----------
        box : tuple of 3 slices
            Half-open (z, y, x) box, step 1, inside :attr:`shape` (``None`` bounds allowed).

        Returns
        -------
        numpy.ndarray
            C-contiguous array of :attr:`dtype` with the box's shape.

        Raises
        ------
        VolumeFormatError
            Corrupt or missing data; the message names the file and the region.
        """
        box = normalize_box(box, self.shape)
        if 0 in _box_shape(box):
            return np.zeros(_box_shape(box), dtype=self.dtype)
        data = self._read(box)
        if data.shape != _box_shape(box):
            raise VolumeFormatError(
                f"{self._where()}: read of {_box_text(box)} gave shape {data.shape}, "
                f"expected {_box_shape(box)}"
            )
        return np.ascontiguousarray(data, dtype=self.dtype)

    @abstractmethod
    def _read(self, box: Box) -> np.ndarray:
        """Read a normalized, non-empty box."""

    def close(self) -> None:
        """Release open files. Reading afterwards is an error."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def _where(self) -> str:
        return self.path if self.dataset is None else f"{self.path} [{self.dataset}]"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._where()!r}, shape={self.shape}, dtype={self.dtype}, "
            f"voxel_size={self.voxel_size}, chunks={self.chunks})"
        )


# --------------------------------------------------------------------------------------------
# TIFF


@contextmanager
def _tifffile_errors():
    """Collect the errors tifffile logs instead of raising (broken IFD chains, bad tags).

    tifffile stops at a broken page list with only a log record, which would silently shorten
    a truncated stack; the records are turned into exceptions by the callers.
    """
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = _Collect(level=logging.ERROR)
    tiff_logger = logging.getLogger("tifffile")
    tiff_logger.addHandler(handler)
    try:
        yield records
    finally:
        tiff_logger.removeHandler(handler)


def _open_tiff(path: str) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for unreadable headers
        raise VolumeFormatError(f"{path}: not a readable TIFF file ({exc})") from exc


def _tiff_pages(tif: tifffile.TiffFile, path: str) -> list:
    with _tifffile_errors() as records:
        try:
            pages = list(tif.pages)
        except Exception as exc:
            raise VolumeFormatError(f"{path}: corrupt TIFF page list ({exc})") from exc
    if records:
        raise VolumeFormatError(
            f"{path}: corrupt or truncated TIFF: page list broken after page {len(pages) - 1} "
            f"({records[0].getMessage()})"
        )
    if not pages:
        raise VolumeFormatError(f"{path}: TIFF file has no pages")
    return pages


def _check_page_extent(page, path: str, index: int, file_size: int) -> None:
    """A truncated file shows as strips/tiles ending beyond the end of the file."""
    ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c > 0]
    if ends and max(ends) > file_size:
        raise VolumeFormatError(
            f"{path}: truncated TIFF: page {index} data ends at byte {max(ends)} but the file "
            f"has {file_size} bytes"
        )


def _is_color(page) -> bool:
    """RGB-like photometrics, or interleaved extra samples (gray + alpha and the like)."""
    color_photometrics = (2, 5, 6, 8, 9, 10)  # RGB, CMYK, YCbCr, CIELab variants
    if page.photometric is not None and int(page.photometric) in color_photometrics:
        return True
    return page.samplesperpixel > 1 and page.axes.endswith("S")


# ImageJ's words for "not calibrated": the file states no voxel size.
_IMAGEJ_NO_UNIT = ("", "pixel", "pixels", "unit", "units", "none")

_IMAGEJ_ATTRIBUTE = "ImageJ calibration ('spacing', 'unit', X/YResolution tags)"


def _imagej_voxel_size(tif: tifffile.TiffFile, page):
    """Voxel size (z, y, x) nm from ImageJ 'spacing', 'unit' and the X/YResolution tags.

    Returns ``(stated, problem)``: the values the file states (None when it states none: no
    ImageJ metadata, no unit or 'pixel', no z spacing) and, when they cannot be read, why.
    """
    meta = tif.imagej_metadata
    if not meta:
        return None, None
    unit = str(meta.get("unit", "")).strip().lower()
    spacing = meta.get("spacing")
    if unit in _IMAGEJ_NO_UNIT or spacing is None:
        return None, None
    scale = _UNIT_NM.get(unit)
    if scale is None:
        return None, f"unknown unit '{unit}'"
    try:
        sizes = []
        for name in ("YResolution", "XResolution"):
            num, den = page.tags[name].value
            sizes.append(den / num * scale)
        return (float(spacing) * scale, *sizes), None
    except KeyError as exc:
        return None, f"no {exc.args[0]} tag"
    except (TypeError, ValueError):
        return None, f"'spacing' {spacing} is not a number"
    except ZeroDivisionError:
        return None, "a resolution tag is zero"


class TiffStackSource(VolumeSource):
    """One TIFF file: each page a z-section, or a single page that is itself 3-D.

    A single 3-D page (planar-separate samples or SGI ImageDepth) is memory-mapped when stored
    uncompressed and contiguous; otherwise it is decoded whole on first read and kept, so such
    files must fit in memory. Section pages are decoded whole for every read that touches
    them: read boxes spanning full sections (``chunks`` is ``(1, Y, X)``) to decode each once.
    """

    format = "tiff"

    def __init__(self, path, *, voxel_size=None):
        path = str(path)
        tif = _open_tiff(path)
        try:
            self._tif = tif
            self._pages = _tiff_pages(tif, path)
            self._volume = None
            file_size = os.path.getsize(path)
            first = self._pages[0]
            for index, page in enumerate(self._pages):
                _check_page_extent(page, path, index, file_size)
            if len(self._pages) == 1:
                shape, dtype = self._init_single_page(path, first)
                chunks = None
            else:
                shape, dtype = self._check_sections(path)
                self._check_single_channel(tif, path)
                chunks = (1, *shape[1:])
            stated, problem = _imagej_voxel_size(tif, first)
            voxel_size, file_voxel_size, note = _settle_voxel_size(
                path, _IMAGEJ_ATTRIBUTE, stated, problem, voxel_size)
        except BaseException:
            tif.close()
            raise
        super().__init__(path, shape=shape, dtype=dtype, voxel_size=voxel_size, chunks=chunks,
                         file_voxel_size=file_voxel_size, voxel_size_note=note)

    def _init_single_page(self, path: str, page):
        if page.dtype is None:
            raise VolumeFormatError(f"{path}: page 0 has an unsupported sample format")
        _check_numeric(page.dtype, f"{path} page 0")
        if _is_color(page):
            raise VolumeFormatError(
                f"{path}: page 0 is an RGB/multi-channel image (shape {page.shape}); only "
                "single-channel grayscale volumes are supported"
            )
        if page.ndim == 2:
            raise VolumeFormatError(
                f"{path}: a single 2-D image (shape {page.shape}), not a volume; store one "
                "page per z-section, or use a folder of section files (format 'tiff-folder')"
            )
        if page.ndim != 3 or page.axes not in ("SYX", "ZYX"):
            raise VolumeFormatError(
                f"{path}: page 0 has shape {page.shape} with axes {page.axes!r}; expected a "
                "grayscale z, y, x volume"
            )
        if page.is_memmappable:
            dtype = page.dtype.newbyteorder(self._tif.byteorder)
            self._volume = np.memmap(
                path, dtype=dtype, mode="r", offset=page.dataoffsets[0], shape=page.shape
            )
        return page.shape, page.dtype

    @staticmethod
    def _check_single_channel(tif: tifffile.TiffFile, path: str) -> None:
        """ImageJ and OME hyperstacks interleave channels and time points with z in the page
        list; taking their pages as sections would silently mix them."""
        try:
            series = tif.series[0]
        except Exception:  # no parsable series metadata: the plain page list stands
            return
        for axis, length in zip(series.axes, series.shape):
            if axis in "CTS" and length > 1:
                raise VolumeFormatError(
                    f"{path}: hyperstack with axes {series.axes!r} and shape {series.shape}: "
                    f"{length} along {axis!r}; only single-channel, single-time-point volumes "
                    "are supported"
                )

    def _check_sections(self, path: str):
        first = self._pages[0]
        for index, page in enumerate(self._pages):
            if page.dtype is None:
                raise VolumeFormatError(f"{path}: page {index} has an unsupported sample format")
            if _is_color(page) or page.ndim != 2:
                raise VolumeFormatError(
                    f"{path}: page {index} has shape {page.shape} (axes {page.axes!r}); "
                    "RGB/multi-channel or multi-dimensional pages are not supported, each page "
                    "must be one grayscale 2-D section"
                )
            if page.shape != first.shape or page.dtype != first.dtype:
                raise VolumeFormatError(
                    f"{path}: page {index} has shape {page.shape} and dtype {page.dtype} but "
                    f"page 0 has shape {first.shape} and dtype {first.dtype}; all sections "
                    "must match"
                )
        _check_numeric(first.dtype, f"{path} page 0")
        return (len(self._pages), *first.shape), first.dtype

    def _read(self, box: Box) -> np.ndarray:
        zs, ys, xs = box
        if len(self._pages) == 1:
            if self._volume is None:
                self._volume = self._decode(0)
            return np.array(self._volume[zs, ys, xs])
        out = np.empty(_box_shape(box), dtype=self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            out[i] = self._decode(z)[ys, xs]
        return out

    def _decode(self, index: int) -> np.ndarray:
        try:
            return self._pages[index].asarray()
        except Exception as exc:  # codec errors come in many types
            raise VolumeFormatError(f"{self.path}: cannot decode page {index} ({exc})") from exc

    def close(self) -> None:
        self._volume = None
        self._pages = []
        self._tif.close()


def _natural_key(name: str):
    """Sort key putting 's2.tif' before 's10.tif'."""
    parts = re.split(r"(\d+)", name)
    return [int(p) if p.isdigit() else p.lower() for p in parts], name


class TiffFolderSource(VolumeSource):
    """A folder of single-page 2-D TIFF sections, z order = natural sort of the file names.

    Opening reads every file's header (shape, dtype, data extent); reading a box opens only
    the section files inside it.

    Attributes
    ----------
    files : list of str
        Section files in z order.
    """

    format = "tiff-folder"

    def __init__(self, path, *, voxel_size=None):
        path = str(path)
        names = sorted(
            (
                n
                for n in os.listdir(path)
                if n.lower().endswith(_TIFF_SUFFIXES) and not n.startswith(".")
            ),
            key=_natural_key,
        )
        if not names:
            raise VolumeFormatError(f"{path}: folder contains no .tif/.tiff section files")
        self.files = [os.path.join(path, n) for n in names]
        first_shape = first_dtype = None
        for file in self.files:
            shape, dtype = self._inspect(file)
            if first_shape is None:
                first_shape, first_dtype = shape, dtype
            elif shape != first_shape or dtype != first_dtype:
                raise VolumeFormatError(
                    f"{file}: section has shape {shape} and dtype {dtype} but {self.files[0]} "
                    f"has shape {first_shape} and dtype {first_dtype}; all sections must match"
                )
        voxel_size, _, _ = _settle_voxel_size(path, "", None, None, voxel_size)
        super().__init__(
            path,
            shape=(len(self.files), *first_shape),
            dtype=first_dtype,
            voxel_size=voxel_size,
            chunks=(1, *first_shape),
            file_voxel_size=None,
        )

    @staticmethod
    def _inspect(file: str):
        with _open_tiff(file) as tif:
            pages = _tiff_pages(tif, file)
            page = pages[0]
            if len(pages) != 1:
                raise VolumeFormatError(
                    f"{file}: has {len(pages)} pages; a section folder needs one 2-D page per file"
                )
            if page.dtype is None:
                raise VolumeFormatError(f"{file}: page 0 has an unsupported sample format")
            if _is_color(page) or page.ndim != 2:
                raise VolumeFormatError(
                    f"{file}: section has shape {page.shape} (axes {page.axes!r}); RGB or "
                    "multi-channel sections are not supported, each must be grayscale 2-D"
                )
            _check_page_extent(page, file, 0, os.path.getsize(file))
            return page.shape, _check_numeric(page.dtype, file)

    def _read(self, box: Box) -> np.ndarray:
        zs, ys, xs = box
        out = np.empty(_box_shape(box), dtype=self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            file = self.files[z]
            try:
                with tifffile.TiffFile(file) as tif:
                    section = tif.pages[0].asarray()
            except Exception as exc:
                raise VolumeFormatError(
                    f"{file}: cannot read section z={z} (page 0): {exc}"
                ) from exc
            if section.shape != self.shape[1:]:
                raise VolumeFormatError(
                    f"{file}: section z={z} changed shape to {section.shape} since opening, "
                    f"expected {self.shape[1:]}"
                )
            out[i] = section[ys, xs]
        return out


# --------------------------------------------------------------------------------------------
# HDF5


def read_box(source, box: Box) -> np.ndarray:
    """A sub-volume of an ndarray-like (numpy, zarr, h5py) or of a :class:`VolumeSource`."""
    if callable(getattr(source, "read", None)) and not isinstance(source, np.ndarray):
        return np.asarray(source.read(box))
    return np.asarray(source[box])


def list_hdf5_datasets(path) -> list[tuple[str, tuple, str]]:
    """Every 3-D dataset of an HDF5 file, to help pick one.

    Returns
    -------
    list of (str, tuple of int, str)
        Internal path, shape and dtype name of each 3-D dataset, sorted by path.
    """
    path = str(path)
    try:
        with h5py.File(path, "r") as f:
            return [(name, shape, str(dtype)) for name, shape, dtype in _hdf5_datasets(f, 3)]
    except OSError as exc:
        raise VolumeFormatError(f"{path}: not a readable HDF5 file ({exc})") from exc


def _hdf5_datasets(f: h5py.File, ndim: int | None = None) -> list[tuple[str, tuple, np.dtype]]:
    found = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and (ndim is None or obj.ndim == ndim):
            found.append((name, obj.shape, obj.dtype))

    f.visititems(visit)
    return sorted(found)


def _listing(entries) -> str:
    if not entries:
        return "none"
    return ", ".join(f"{name} {tuple(shape)} {dtype}" for name, shape, dtype in entries)


def _voxel_size_attr(attrs, name: str = "resolution"):
    """A 3-vector attribute in nm (z, y, x), CREMI convention, as ``(stated, problem)``.

    ``stated`` is None when the attribute is absent; ``problem`` says why it cannot be read.
    """
    if name not in attrs:
        return None, None
    raw = None
    try:
        raw = attrs[name]
        values = np.asarray(raw, dtype=object).reshape(-1)
        if any(isinstance(v, (str, bytes)) for v in values):
            text = " ".join(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                            for v in values)
            return None, f"'{text}' is text, not numbers"
        return tuple(float(v) for v in values), None
    except (TypeError, ValueError):
        return None, f"{format_numbers(raw)} holds values that are not numbers"
    except OSError as exc:
        return None, f"unreadable ({exc})"


class Hdf5Source(VolumeSource):
    """A 3-D dataset of an HDF5 file (CREMI layout and ``resolution`` attribute understood)."""

    format = "hdf5"

    def __init__(self, path, *, dataset=None, voxel_size=None):
        path = str(path)
        try:
            self._file = h5py.File(path, "r")
        except OSError as exc:
            raise VolumeFormatError(
                f"{path}: not a readable HDF5 file, or truncated/corrupt ({exc})"
            ) from exc
        try:
            dataset = self._pick(path, dataset)
            self._ds = self._file[dataset]
            where = f"{path} [{dataset}]"
            dtype = _check_numeric(self._ds.dtype, where)
            stated, problem = _voxel_size_attr(self._ds.attrs)
            voxel_size, file_voxel_size, note = _settle_voxel_size(
                where, "attribute 'resolution'", stated, problem, voxel_size)
        except BaseException:
            self._file.close()
            raise
        super().__init__(
            path,
            shape=self._ds.shape,
            dtype=dtype,
            voxel_size=voxel_size,
            chunks=self._ds.chunks,
            dataset=dataset,
            file_voxel_size=file_voxel_size,
            voxel_size_note=note,
        )

    def _pick(self, path: str, dataset: str | None) -> str:
        f = self._file
        if dataset is not None:
            dataset = dataset.strip("/")
            obj = f.get(dataset) if dataset else None
            if not isinstance(obj, h5py.Dataset):
                what = "is a group, not a dataset" if isinstance(obj, h5py.Group) else "not found"
                raise VolumeFormatError(
                    f"{path}: dataset {dataset!r} {what}; 3-D datasets in the file: "
                    f"{_listing(_hdf5_datasets(f, 3))}"
                )
            if obj.ndim != 3:
                raise VolumeFormatError(
                    f"{path}: dataset {dataset!r} is {obj.ndim}-D with shape {obj.shape}; a "
                    f"3-D (z, y, x) dataset is needed. 3-D datasets in the file: "
                    f"{_listing(_hdf5_datasets(f, 3))}"
                )
            return dataset
        candidates = _hdf5_datasets(f, 3)
        if len(candidates) == 1:
            return candidates[0][0]
        if isinstance(f.get("volumes/raw"), h5py.Dataset) and f["volumes/raw"].ndim == 3:
            return "volumes/raw"
        if not candidates:
            raise VolumeFormatError(
                f"{path}: no 3-D dataset in the file; datasets present: "
                f"{_listing(_hdf5_datasets(f))}"
            )
        raise VolumeFormatError(
            f"{path}: {len(candidates)} 3-D datasets, choose one with dataset=...: "
            f"{_listing(candidates)}"
        )

    def _read(self, box: Box) -> np.ndarray:
        try:
            return self._ds[box]
        except (OSError, RuntimeError, ValueError) as exc:
            raise VolumeFormatError(
                f"{self.path}: cannot read dataset {self.dataset!r} region {_box_text(box)} "
                f"(corrupt file?): {exc}"
            ) from exc

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------------------------------
# zarr v2 / OME-Zarr 0.4


def _ome_axes(ms: dict, ndim: int, where: str) -> list[tuple[str, str | None]]:
    """(name, unit) per array axis from OME 'axes' (0.4 dicts or 0.3 strings); z,y,x if absent."""
    axes = ms.get("axes")
    if axes is None:
        if ndim != 3:
            raise VolumeFormatError(f"{where}: {ndim}-D array without OME 'axes' metadata")
        return [("z", None), ("y", None), ("x", None)]
    out = []
    for axis in axes:
        if isinstance(axis, str):
            out.append((axis.lower(), None))
        else:
            out.append((str(axis.get("name", "")).lower(), axis.get("unit")))
    if len(out) != ndim:
        raise VolumeFormatError(
            f"{where}: OME 'axes' lists {len(out)} axes but the array is {ndim}-D"
        )
    return out


def _ome_scale(ms: dict, dataset_path: str):
    """Product of the global and per-dataset 'scale' transforms, in array axis order.

    Returns ``(scale, problem)``: None when no scale is stated; ``problem`` says why the
    stated transforms cannot be read.
    """
    entry = next((d for d in ms.get("datasets", []) if d.get("path") == dataset_path), None)
    if entry is None:
        return None, None
    scale = None
    for transforms in (entry.get("coordinateTransformations", []),
                       ms.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale" and "scale" in t:
                try:
                    values = [float(v) for v in t["scale"]]
                except (TypeError, ValueError):
                    return None, f"scale {t['scale']} is not a list of numbers"
                if scale is not None and len(values) != len(scale):
                    return None, "scale transforms of different lengths"
                scale = values if scale is None else [a * b for a, b in zip(scale, values)]
    return scale, None


_OME_ATTRIBUTE = "OME 'coordinateTransformations' scale"


class ZarrSource(VolumeSource):
    """A zarr v2 array, or the level-0 (or ``dataset``) array of an OME-Zarr 0.4 multiscale.

    OME axes may come in any order and may include channel/time axes of length 1; reads are
    always returned as (z, y, x). Voxel size comes from the multiscale 'scale' transforms
    (units converted to nm; axes without a unit are taken as nm), or for a plain array from a
    ``resolution`` attribute (z, y, x nm) as in CREMI files.
    """

    format = "zarr"

    def __init__(self, path, *, dataset=None, voxel_size=None, fill_missing=False):
        path = str(path).rstrip("/\\") or str(path)
        if os.path.exists(os.path.join(path, "zarr.json")):
            raise VolumeFormatError(f"{path}: zarr v3 stores are not supported (zarr v2 only)")
        # Metadata that is not UTF-8 JSON would surface as a bare codec error without a name.
        problem = _zarr_metadata_problem(path)
        if problem is not None:
            raise VolumeFormatError(problem)
        try:
            root = zarr.open(path, mode="r")
        except Exception as exc:  # zarr raises several types for missing/invalid stores
            raise VolumeFormatError(
                f"{path}: not a readable zarr v2 array or group ({exc})"
            ) from exc
        array, array_path, ms, level = self._resolve(path, root, dataset)
        where = f"{path} [{array_path}]" if array_path else path
        dtype = _check_numeric(array.dtype, where)
        axes = _ome_axes(ms or {}, array.ndim, where)
        names = [name for name, _ in axes]
        if sorted(n for n in names if n in ("z", "y", "x")) != ["x", "y", "z"]:
            raise VolumeFormatError(f"{where}: axes {names} do not include exactly z, y and x")
        self._order = [names.index(n) for n in "zyx"]
        self._fixed = {}
        for i, name in enumerate(names):
            if name not in ("z", "y", "x"):
                if array.shape[i] != 1:
                    raise VolumeFormatError(
                        f"{where}: axis {name!r} has length {array.shape[i]}; only single-"
                        "channel, single-time-point volumes are supported"
                    )
                self._fixed[i] = 0
        stated = problem = None
        if ms is not None:
            attribute = _OME_ATTRIBUTE
            scale, problem = _ome_scale(ms, level)
            if scale is not None and len(scale) != array.ndim:
                problem = f"{len(scale)} values for a {array.ndim}-D array"
            elif scale is not None:
                stated = []
                for i in self._order:
                    unit = axes[i][1]
                    factor = 1.0 if unit is None else _UNIT_NM.get(str(unit).lower())
                    if factor is None:
                        stated, problem = None, f"unknown unit '{unit}' of axis '{axes[i][0]}'"
                        break
                    stated.append(scale[i] * factor)
        else:
            attribute = "attribute 'resolution'"
            stated, problem = _voxel_size_attr(array.attrs)
        voxel_size, file_voxel_size, note = _settle_voxel_size(
            where, attribute, stated, problem, voxel_size)
        # Read through a chunk store that remembers the keys it did not find: zarr reads an
        # absent chunk as the fill value without a word, and looks each key up anyway, so
        # noting the missing ones costs nothing more.
        self._chunk_reads = _ChunkReads(array.chunk_store if array.chunk_store is not None
                                        else array.store)
        array = zarr.Array(array.store, path=array.path, read_only=True,
                           chunk_store=self._chunk_reads)
        self._array = array
        self._root = path
        self._fill_missing = bool(fill_missing)
        super().__init__(
            path,
            shape=[array.shape[i] for i in self._order],
            dtype=dtype,
            voxel_size=voxel_size,
            chunks=[array.chunks[i] for i in self._order],
            dataset=array_path or None,
            file_voxel_size=file_voxel_size,
            voxel_size_note=note,
        )

    @staticmethod
    def _resolve(path: str, root, dataset: str | None):
        """Array, its path inside ``path``, the multiscales entry describing it (or None) and
        its level path within that entry."""
        if isinstance(root, zarr.Array):
            # An array opened directly may be one level of an OME-Zarr multiscale group.
            if dataset:
                raise VolumeFormatError(f"{path}: is an array; it has no sub-path {dataset!r}")
            parent, name = os.path.split(os.path.abspath(path))
            try:
                group = zarr.open_group(parent, mode="r")
                ms = group.attrs.get("multiscales", [None])[0]
            except Exception:  # parent is no zarr group: a plain array
                ms = None
            if ms is not None and not any(d.get("path") == name for d in ms.get("datasets", [])):
                ms = None
            return root, "", ms, name
        group = root
        prefix = ""
        if dataset:
            dataset = dataset.strip("/")
            try:
                node = root[dataset]
            except KeyError:
                raise VolumeFormatError(
                    f"{path}: {dataset!r} not found; arrays present: "
                    f"{_listing(_zarr_arrays(root))}"
                ) from None
            if isinstance(node, zarr.Array):
                parent_path, _, name = dataset.rpartition("/")
                parent = root[parent_path] if parent_path else root
                ms = parent.attrs.get("multiscales", [None])[0]
                if ms is not None and not any(d.get("path") == name for d in ms["datasets"]):
                    ms = None
                return node, dataset, ms, name
            group, prefix = node, dataset + "/"
        multiscales = group.attrs.get("multiscales")
        if multiscales:
            ms = multiscales[0]
            try:
                level = ms["datasets"][0]["path"]
                return group[level], prefix + level, ms, level
            except (KeyError, IndexError, TypeError) as exc:
                raise VolumeFormatError(
                    f"{path}: 'multiscales' metadata names no readable level-0 array ({exc})"
                ) from exc
        arrays = _zarr_arrays(group)
        if len(arrays) != 1:
            raise VolumeFormatError(
                f"{path}: group holds {len(arrays)} arrays and no OME 'multiscales' metadata; "
                f"choose one with dataset=...: {_listing(arrays)}"
            )
        return group[arrays[0][0]], prefix + arrays[0][0], None, None

    def _read(self, box: Box) -> np.ndarray:
        selection = [None] * self._array.ndim
        for i, value in self._fixed.items():
            selection[i] = value
        for axis, s in zip(self._order, box):
            selection[axis] = s
        fill = self._array.fill_value
        # zarr reads an absent chunk key as the fill value (or, without one, as whatever the
        # memory held): a deleted chunk would import silently.
        self._chunk_reads.missing.clear()
        try:
            data = self._array[tuple(selection)]
        except Exception as exc:  # codec errors (numcodecs/blosc) come in many types
            raise VolumeFormatError(
                f"{self._where()}: cannot read region {_box_text(box)} (corrupt chunk?): {exc}"
            ) from exc
        missing = [(key, self._key_region(key)) for key in sorted(self._chunk_reads.missing)]
        if missing and not self._fill_missing:
            key, region = missing[0]
            more = f" ({len(missing) - 1} more in this block)" if len(missing) > 1 else ""
            as_read = ("uninitialised memory (the array has no fill value)" if fill is None
                       else f"the fill value {format_number(fill)}")
            raise VolumeFormatError(
                f"{os.path.join(self._root, key)}: zarr chunk '{key}' "
                f"({_region_text(region)}) is missing{more}; zarr would read it as {as_read}. "
                "A deleted or never-written chunk (writers that skip chunks holding only the "
                "fill value leave them out too); with fill_missing (--fill-missing) missing "
                f"chunks read as {format_number(fill) if fill is not None else 0}"
            )
        # The integer-indexed axes are gone; put the remaining space axes in z, y, x order.
        kept = [i for i in range(self._array.ndim) if i not in self._fixed]
        data = np.transpose(data, [kept.index(i) for i in self._order])
        if missing and fill is None:  # filled without a fill value: zeros, not stale memory
            data = np.array(data)
            for _, region in missing:
                data[tuple(slice(max(r.start, b.start) - b.start, min(r.stop, b.stop) - b.start)
                           for r, b in zip(region, box))] = 0
        return data

    def _key_region(self, key: str) -> Box:
        """The (z, y, x) region of the volume that chunk ``key`` holds."""
        array = self._array
        separator = getattr(array, "_dimension_separator", None) or "."
        coords = [int(c) for c in key[len(array._key_prefix):].split(separator)]
        return tuple(
            slice(coords[axis] * c, min((coords[axis] + 1) * c, n))
            for axis, c, n in zip(self._order, self.chunks, self.shape)
        )


class _ChunkReads(zarr.storage.BaseStore):
    """A read-only view of a zarr store that notes the chunk keys a read did not find."""

    _readable = True
    _listable = True
    _writeable = False
    _erasable = False

    def __init__(self, store):
        self._store = store
        self.missing: list[str] = []

    def __getitem__(self, key):
        return self._store[key]

    def __contains__(self, key):
        return key in self._store

    def __iter__(self):
        return iter(self._store)

    def __len__(self):
        return len(self._store)

    def __setitem__(self, key, value):
        raise PermissionError("volume sources are read-only")

    def __delitem__(self, key):
        raise PermissionError("volume sources are read-only")

    def listdir(self, path=""):
        return self._store.listdir(path)

    def getitems(self, keys, *, contexts):
        found = self._store.getitems(keys, contexts=contexts)
        self.missing.extend(key for key in keys if key not in found)
        return found


_ZARR_METADATA = (".zgroup", ".zarray", ".zattrs", ".zmetadata")


def _json_file_problem(file: str) -> str | None:
    """Why ``file`` is not UTF-8 JSON (naming it and the line), or None."""
    try:
        with open(file, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        return f"{file}: cannot read ({exc.strerror or exc})"
    try:
        json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        return (f"{file} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte "
                f"{exc.start}); zarr metadata is UTF-8 JSON")
    except json.JSONDecodeError as exc:
        return f"{file} line {exc.lineno}: not valid JSON ({exc.msg})"
    return None


def _zarr_metadata_problem(path: str) -> str | None:
    """The first zarr metadata file of the store at ``path`` (or of the group holding it, which
    an array opened directly may belong to) that is not UTF-8 JSON; None when all are.

    Descends into groups only: an array's folder is never listed (it may hold millions of
    chunk files).
    """
    parent = os.path.dirname(os.path.abspath(path))
    for name in (".zgroup", ".zattrs"):
        file = os.path.join(parent, name)
        if os.path.isfile(file):
            problem = _json_file_problem(file)
            if problem is not None:
                return problem
    folders = [path]
    while folders:
        folder = folders.pop(0)
        for name in _ZARR_METADATA:
            file = os.path.join(folder, name)
            if os.path.isfile(file):
                problem = _json_file_problem(file)
                if problem is not None:
                    return problem
        if not os.path.isfile(os.path.join(folder, ".zgroup")):
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir() and any(os.path.isfile(os.path.join(entry.path, name))
                                      for name in (".zarray", ".zgroup")):
                folders.append(entry.path)
    return None


def _zarr_arrays(group) -> list[tuple[str, tuple, np.dtype]]:
    found = []

    def visit(name, obj):
        if isinstance(obj, zarr.Array):
            found.append((name, obj.shape, obj.dtype))

    group.visititems(visit)
    return sorted(found)


# --------------------------------------------------------------------------------------------
# Neuroglancer precomputed (local disk)


class PrecomputedSource(VolumeSource):
    """One scale of a Neuroglancer precomputed volume on local disk.

    Supports unsharded ``raw`` (optionally gzip-compressed chunk files, detected by their
    magic bytes, with or without a ``.gz`` suffix) and ``compressed_segmentation`` encodings
    with one channel. A missing chunk file is an error naming it, unless ``fill_missing``
    asks for the precomputed convention (missing chunks read as 0).

    Reads are in the scale's own index space: voxel (0, 0, 0) of this source is the voxel at
    ``voxel_offset`` in the precomputed coordinate system (the offset is added only to build
    chunk file names). ``voxel_offset`` is exposed, (z, y, x), for callers that need it.
    When a scale lists several ``chunk_sizes``, the first is the one its files use.
    """

    format = "precomputed"

    def __init__(self, path, *, dataset=None, voxel_size=None, fill_missing=False):
        path = str(path)
        info_path = os.path.join(path, "info")
        try:
            with open(info_path, "rb") as fh:
                raw_info = fh.read()
            info = json.loads(raw_info.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = raw_info[:exc.start].count(b"\n") + 1
            raise VolumeFormatError(
                f"{info_path} line {line}: not UTF-8 text (byte 0x{raw_info[exc.start]:02x} at "
                f"byte {exc.start}); precomputed info files are UTF-8 JSON"
            ) from None
        except json.JSONDecodeError as exc:
            raise VolumeFormatError(
                f"{info_path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
        except OSError as exc:
            raise VolumeFormatError(f"{info_path}: cannot read precomputed info ({exc})") from exc
        if not isinstance(info, dict):
            raise VolumeFormatError(f"{info_path}: precomputed info is not a JSON object")
        try:
            scales = info["scales"]
            if dataset is None:
                scale = scales[0]
            else:
                keys = [s["key"] for s in scales]
                if dataset not in keys:
                    raise VolumeFormatError(
                        f"{info_path}: no scale with key {dataset!r}; scales: {keys}"
                    )
                scale = scales[keys.index(dataset)]
            key = scale["key"]
            channels = int(info.get("num_channels", 1))
            dtype = np.dtype(str(info["data_type"])).newbyteorder("<")
            size_xyz = [int(v) for v in scale["size"]]
            chunk_xyz = [int(v) for v in scale["chunk_sizes"][0]]
            offset_xyz = [int(v) for v in scale.get("voxel_offset", (0, 0, 0))]
            encoding = scale.get("encoding", "raw")
        except KeyError as exc:
            raise VolumeFormatError(
                f"{info_path}: malformed precomputed info (no '{exc.args[0]}')") from None
        except (IndexError, TypeError, ValueError) as exc:
            raise VolumeFormatError(f"{info_path}: malformed precomputed info ({exc})") from None
        where = f"{info_path} (scale '{key}')"
        if len(size_xyz) != 3 or len(chunk_xyz) != 3 or len(offset_xyz) != 3:
            raise VolumeFormatError(
                f"{where}: 'size', 'chunk_sizes' and 'voxel_offset' need 3 values (x, y, z)")
        if any(n < 0 for n in size_xyz) or any(c < 1 for c in chunk_xyz):
            raise VolumeFormatError(
                f"{where}: 'size' {format_numbers(size_xyz)} must not be negative and "
                f"'chunk_sizes' {format_numbers(chunk_xyz)} must be positive")
        if "resolution" in scale:
            resolution, problem = _voxel_size_attr(scale, "resolution")
            stated = None if resolution is None else tuple(resolution)[::-1]
        else:
            stated, problem = None, "missing"
        voxel_size, file_voxel_size, note = _settle_voxel_size(
            where, "'resolution' (z, y, x from the info's x, y, z)", stated, problem, voxel_size)
        if channels != 1:
            raise VolumeFormatError(f"{where}: num_channels is {channels}; only 1 is supported")
        if "sharding" in scale and scale["sharding"]:
            raise VolumeFormatError(f"{where}: sharded precomputed volumes are not supported")
        if encoding not in ("raw", "compressed_segmentation"):
            raise VolumeFormatError(
                f"{where}: encoding {encoding!r} not supported (raw, compressed_segmentation)"
            )
        if encoding == "compressed_segmentation":
            if dtype not in (np.dtype("<u4"), np.dtype("<u8")):
                raise VolumeFormatError(
                    f"{where}: compressed_segmentation needs uint32/uint64, not {dtype}"
                )
            self._cseg_block = [int(v) for v in scale["compressed_segmentation_block_size"]]
        self._dir = os.path.join(path, key)
        self._encoding = encoding
        self._file_dtype = dtype
        self._chunk = chunk_xyz[::-1]
        self._fill_missing = bool(fill_missing)
        self.voxel_offset = tuple(offset_xyz[::-1])
        super().__init__(
            path,
            shape=size_xyz[::-1],
            dtype=_check_numeric(dtype, where),
            voxel_size=voxel_size,
            chunks=chunk_xyz[::-1],
            dataset=key,
            file_voxel_size=file_voxel_size,
            voxel_size_note=note,
        )

    def _chunk_file(self, start, stop) -> str:
        (z0, y0, x0), (z1, y1, x1) = (
            [s + o for s, o in zip(start, self.voxel_offset)],
            [s + o for s, o in zip(stop, self.voxel_offset)],
        )
        return os.path.join(self._dir, f"{x0}-{x1}_{y0}-{y1}_{z0}-{z1}")

    def _read(self, box: Box) -> np.ndarray:
        out = np.zeros(_box_shape(box), dtype=self.dtype)
        ranges = [
            range(s.start // c, -(-s.stop // c)) for s, c in zip(box, self._chunk)
        ]
        for iz in ranges[0]:
            for iy in ranges[1]:
                for ix in ranges[2]:
                    start = [i * c for i, c in zip((iz, iy, ix), self._chunk)]
                    stop = [min(s + c, n) for s, c, n in zip(start, self._chunk, self.shape)]
                    chunk = self._load_chunk(start, stop)
                    if chunk is None:
                        continue
                    lo = [max(s, b.start) for s, b in zip(start, box)]
                    hi = [min(e, b.stop) for e, b in zip(stop, box)]
                    out[tuple(slice(a - b.start, z - b.start) for a, z, b in zip(lo, hi, box))] = (
                        chunk[tuple(slice(a - s, z - s) for a, z, s in zip(lo, hi, start))]
                    )
        return out

    def _load_chunk(self, start, stop) -> np.ndarray | None:
        file = self._chunk_file(start, stop)
        for candidate in (file, file + ".gz"):
            if os.path.exists(candidate):
                file = candidate
                break
        else:
            if self._fill_missing:
                return None
            region = tuple(slice(a, b) for a, b in zip(start, stop))
            raise VolumeFormatError(
                f"{file}: precomputed chunk ({_region_text(region)}) is missing; a deleted "
                "chunk, or one its writer skipped because it held only 0; with fill_missing "
                "(--fill-missing) missing chunks read as 0"
            )
        try:
            with open(file, "rb") as fh:
                raw = fh.read()
            if raw[:2] == _GZIP_MAGIC:
                raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise VolumeFormatError(f"{file}: cannot read precomputed chunk ({exc})") from exc
        shape = tuple(e - s for s, e in zip(start, stop))
        if self._encoding == "compressed_segmentation":
            return _decode_compressed_segmentation(
                raw, shape, self._cseg_block, self._file_dtype, file
            )
        expected = math.prod(shape) * self._file_dtype.itemsize
        if len(raw) != expected:
            raise VolumeFormatError(
                f"{file}: precomputed chunk has {len(raw)} bytes, expected {expected} for "
                f"{shape[::-1]} (x, y, z) voxels of {self._file_dtype.name}"
            )
        # x varies fastest in the file, so the bytes are a C-order (z, y, x) array.
        return np.frombuffer(raw, dtype=self._file_dtype).reshape(shape)


def _decode_compressed_segmentation(raw: bytes, shape, block_xyz, dtype, file) -> np.ndarray:
    """Decode one single-channel compressed_segmentation chunk to a (z, y, x) array.

    Format: neuroglancer ``sliceview/compressed_segmentation/README.md``; a leading uint32 per
    channel gives the offset of that channel's data, all other offsets count 32-bit words
    from the start of the channel data.
    """
    if len(raw) % 4:
        raise VolumeFormatError(
            f"{file}: compressed_segmentation chunk of {len(raw)} bytes, not whole 32-bit words"
        )
    words = np.frombuffer(raw, dtype="<u4")
    table_words = 2 if dtype.itemsize == 8 else 1
    block = tuple(block_xyz[::-1])
    grid = [-(-n // b) for n, b in zip(shape, block)]
    voxels = math.prod(block)
    out = np.empty([g * b for g, b in zip(grid, block)], dtype=dtype)
    try:
        data = words[int(words[0]):]
        headers = data[: 2 * math.prod(grid)].reshape(-1, 2)
        if len(headers) != math.prod(grid):
            raise IndexError("block headers truncated")
        for index, (head, values_at) in enumerate(headers):
            table_at, bits = int(head) & 0xFFFFFF, int(head) >> 24
            if bits == 0:
                codes = np.zeros(voxels, dtype=np.uint32)
            else:
                if bits not in (1, 2, 4, 8, 16, 32):
                    raise InputError(f"invalid encoded bits {bits}")
                per_word = 32 // bits
                packed = data[int(values_at): int(values_at) + -(-voxels // per_word)]
                if len(packed) * per_word < voxels:
                    raise IndexError("encoded values truncated")
                shifts = np.arange(per_word, dtype=np.uint32) * np.uint32(bits)
                mask = np.uint32(0xFFFFFFFF if bits == 32 else (1 << bits) - 1)
                codes = ((packed[:, None] >> shifts) & mask).reshape(-1)[:voxels]
            entries = int(codes.max()) + 1
            table = data[table_at: table_at + entries * table_words]
            if len(table) != entries * table_words:
                raise IndexError("lookup table truncated")
            table = table.view("<u8") if table_words == 2 else table
            gz, rest = divmod(index, grid[1] * grid[2])
            gy, gx = divmod(rest, grid[2])
            out[
                gz * block[0]: (gz + 1) * block[0],
                gy * block[1]: (gy + 1) * block[1],
                gx * block[2]: (gx + 1) * block[2],
            ] = table[codes].reshape(block)
    except (IndexError, ValueError) as exc:
        raise VolumeFormatError(f"{file}: corrupt compressed_segmentation chunk ({exc})") from exc
    return out[: shape[0], : shape[1], : shape[2]]


# --------------------------------------------------------------------------------------------
# Opening


def detect_format(path) -> str:
    """Guess the format name of ``path`` from its extension, layout or magic bytes."""
    path = str(path)
    if not os.path.exists(path):
        raise VolumeFormatError(
            f"{path}: no such file or folder (supported formats: {', '.join(FORMATS)})"
        )
    lower = path.rstrip("/\\").lower()
    if os.path.isdir(path):
        entries = set(os.listdir(path))
        if "info" in entries and os.path.isfile(os.path.join(path, "info")):
            return "precomputed"
        if entries & {".zarray", ".zgroup", "zarr.json"} or lower.endswith(".zarr"):
            return "zarr"
        if any(e.lower().endswith(_TIFF_SUFFIXES) for e in entries):
            return "tiff-folder"
        raise VolumeFormatError(
            f"{path}: folder is not a zarr store, a precomputed volume (no 'info' file) or a "
            f"folder of TIFF sections (supported formats: {', '.join(FORMATS)})"
        )
    if lower.endswith(_TIFF_SUFFIXES):
        return "tiff"
    if lower.endswith(_HDF5_SUFFIXES):
        return "hdf5"
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic == _HDF5_MAGIC:
        return "hdf5"
    if magic[:4] in _TIFF_MAGICS:
        return "tiff"
    raise VolumeFormatError(
        f"{path}: unknown volume format (supported formats: {', '.join(FORMATS)}; "
        "by extension .tif/.tiff, .h5/.hdf5, .zarr, or a precomputed folder with 'info')"
    )


def open_volume(path, *, dataset: str | None = None, format: str | None = None,
                voxel_size=None, fill_missing: bool = False) -> VolumeSource:
    """Open a volume for block reads.

    Parameters
    ----------
    path : str or os.PathLike
        TIFF file, folder of TIFF sections, HDF5 file, zarr array/group folder, or
        precomputed folder (with ``info``).
    dataset : str, optional
        HDF5 dataset path, zarr sub-array/group path, or precomputed scale key. Not valid for
        TIFF.
    format : str, optional
        One of :data:`FORMATS`; detected from ``path`` when omitted.
    voxel_size : (3,) floats, optional
        Voxel size (z, y, x) nm that overrides what the file states (also a statement the
        file gets wrong: ``voxel_size_note`` then says what was wrong).
    fill_missing : bool
        zarr and precomputed: read missing chunks as the fill value (zarr's ``fill_value``,
        else 0) instead of failing.

    Returns
    -------
    VolumeSource
        Open source; close it (or use it as a context manager) when done.

    Raises
    ------
    VolumeFormatError
        Unknown format, missing path, invalid/corrupt content, or a stated voxel size that is
        not usable when none is given; the message names the file.
    """
    path = os.fspath(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise VolumeFormatError(
            f"{path}: unknown format {format!r} (supported formats: {', '.join(FORMATS)})"
        )
    elif not os.path.exists(path):
        raise VolumeFormatError(f"{path}: no such file or folder")
    if format == "tiff" and os.path.isdir(path):
        format = "tiff-folder"
    if format in ("tiff", "tiff-folder"):
        if dataset is not None:
            raise VolumeFormatError(f"{path}: dataset={dataset!r} does not apply to TIFF input")
        source = TiffStackSource if format == "tiff" else TiffFolderSource
        return source(path, voxel_size=voxel_size)
    if format == "hdf5":
        return Hdf5Source(path, dataset=dataset, voxel_size=voxel_size)
    if format == "zarr":
        return ZarrSource(path, dataset=dataset, voxel_size=voxel_size, fill_missing=fill_missing)
    return PrecomputedSource(path, dataset=dataset, voxel_size=voxel_size,
                             fill_missing=fill_missing)
