"""Peak memory and speed of importing a large EM volume into chunked storage.

    python benchmarks/import_memory.py --gib 2 [--format hdf5|tiff] [--keep]

Writes a synthetic uint8 volume of the given size (smooth texture plus noise, so it compresses
like EM rather than like random bytes) to a scratch folder, then imports it in a fresh
process through the same service the import job uses (SQLite and a scratch DATA_ROOT), and
prints the importer's peak resident memory, read off the kernel for that process alone.
"""

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from phases import run_phase


def _shape_for(gib: float) -> tuple[int, int, int]:
    """Sections of 4096 x 4096 pixels (16 MiB each), as many as the size asks."""
    return (max(1, int(round(gib * 64))), 4096, 4096)


def _section(z: int, shape, rng) -> np.ndarray:
    y = np.arange(shape[1], dtype=np.float32)[:, None]
    x = np.arange(shape[2], dtype=np.float32)[None, :]
    base = 150 + 40 * np.sin(x / 37.0 + z / 5.0) * np.cos(y / 29.0)
    noise = rng.normal(0, 12, size=(shape[1], shape[2])).astype(np.float32)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def generate(path: Path, shape, fmt: str) -> None:
    rng = np.random.default_rng(0)
    if fmt == "hdf5":
        import h5py

        with h5py.File(path, "w") as f:
            ds = f.create_dataset("volumes/raw", shape=shape, dtype=np.uint8,
                                  chunks=(1, 512, 512), compression="gzip", compression_opts=1)
            ds.attrs["resolution"] = (40.0, 8.0, 8.0)
            for z in range(shape[0]):
                ds[z] = _section(z, shape, rng)
    else:
        import tifffile

        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for z in range(shape[0]):
                tif.write(_section(z, shape, rng), contiguous=True)


def run_import(source: Path, scratch: Path) -> None:
    os.environ["DATABASE_URL"] = f"sqlite:///{scratch / 'bench.sqlite3'}"
    os.environ["DATA_ROOT"] = str(scratch / "data")
    os.environ["CONNECTOME_VAR_DIR"] = str(scratch / "var")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "connectome.settings")
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from connectome.datasets.services import dataset_create
    from connectome.imports.volumes import import_volume

    dataset = dataset_create(name="bench", voxel_size=(40.0, 8.0, 8.0))
    started = time.perf_counter()
    layer = import_volume(dataset=dataset, source=str(source), name="em", voxel_size=(40, 8, 8))
    elapsed = time.perf_counter() - started
    print(f"import_s={elapsed:.1f} layer_levels={len(layer.downsample_factors)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=2.0, help="volume size in GiB (uint8)")
    parser.add_argument("--format", choices=["hdf5", "tiff"], default="hdf5")
    parser.add_argument("--scratch", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--phase", choices=["generate", "import"], help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "generate":
        generate(args.source, _shape_for(args.gib), args.format)
        return
    if args.phase == "import":
        run_import(args.source, args.scratch)
        return

    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="connectome-bench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    source = scratch / ("volume.h5" if args.format == "hdf5" else "volume.tif")
    shape = _shape_for(args.gib)
    nbytes = int(np.prod(shape))
    try:
        t0 = time.perf_counter()
        run_phase(__file__, ["--phase", "generate", "--gib", str(args.gib), "--format", args.format,
                "--source", str(source)])
        print(f"generated {args.format} volume {shape} = {nbytes / 2**30:.2f} GiB "
              f"in {time.perf_counter() - t0:.0f} s")
        output, peak_mib = run_phase(__file__, ["--phase", "import", "--source", str(source),
                                                "--scratch", str(scratch)], capture=True)
        import_s = float(output.split("import_s=")[1].split()[0])
        print(output.strip())
        print(f"volume_gib={nbytes / 2**30:.2f} shape={shape} format={args.format}")
        print(f"import_wall_s={import_s:.1f} throughput_mib_s={nbytes / 2**20 / import_s:.1f}")
        print(f"peak_rss_mib={peak_mib:.0f} (limit 1024)")
    finally:
        if not args.keep and args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
