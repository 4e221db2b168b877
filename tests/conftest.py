import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_file(name: str) -> Path:
    """A file of the shared real-data folder, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture
def data_root(settings, tmp_path):
    """A fresh DATA_ROOT per test, so volumes written by one test never leak into another."""
    root = tmp_path / "data-root"
    root.mkdir()
    settings.DATA_ROOT = root
    return root


@pytest.fixture(autouse=True)
def import_roots(settings, tmp_path_factory):
    """Tests put the files they import in their temporary folders: those are the import roots
    (tests of the roots themselves set their own)."""
    settings.IMPORT_ROOTS = [tmp_path_factory.getbasetemp().resolve()]
    return settings.IMPORT_ROOTS
