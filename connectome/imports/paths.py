"""Which server paths a job may read, and where exports go.

Import jobs (and the model files that detection jobs read) name files on the server. Who may
name what:

- a superuser, or an operator at the shell (management commands, the demo: jobs created with no
  user), may name any path the worker can read;
- everybody else only paths under ``IMPORT_ROOTS``. The check resolves the path first, so
  ``..`` and symbolic links are judged by where they lead; a folder source (TIFF folder, zarr,
  precomputed, SWC folder) is also refused when a link inside it leads out of the roots.

A path outside the roots is refused with the same message whether or not it exists, so the
check tells nothing about the server's files. Exports never write where the caller says: they
write into the job's own folder under ``DATA_ROOT/datasets/<id>/exports/`` and the file is
downloaded over the API (``/api/jobs/<id>/download/``).
"""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings

from detection.errors import InputError

#: Entries of a folder source looked at before the check gives up (a bound on the work done
#: for one job, whatever the folder holds).
MAX_TREE_ENTRIES = 5_000_000


class PathNotAllowed(InputError):
    """A server path that the job's creator may not read."""


class SourceMissing(InputError):
    """A server path (under the roots, or named by a superuser) that does not exist."""


def import_roots() -> list[Path]:
    return [Path(root) for root in settings.IMPORT_ROOTS]


def _outside(path: Path, roots: list[Path]) -> bool:
    return not any(path == root or root in path.parents for root in roots)


def _refusal(value: str) -> PathNotAllowed:
    roots = import_roots()
    where = ", ".join(map(str, roots)) if roots else "none are configured"
    return PathNotAllowed(
        f"{value} is not under the import roots ({where}); put the file there, or ask a "
        "superuser to import it")


def check_source_path(value: str, *, any_path: bool) -> Path:
    """The resolved path of a file or folder to read; raises PathNotAllowed or SourceMissing.

    Without ``any_path`` the path must lie under ``IMPORT_ROOTS`` once ``~``, ``..`` and links
    are resolved; outside them, existence is not looked at, so the message is the same for a
    path that exists and one that does not.
    """
    text = str(value)
    if not text.strip() or "\x00" in text:
        raise PathNotAllowed("a path must be a non-empty string without NUL characters")
    path = Path(text).expanduser()
    if not path.is_absolute() and not any_path:
        raise PathNotAllowed(f"{text} is a relative path; give the full path under the "
                             "import roots")
    resolved = path.resolve()
    if not any_path and _outside(resolved, import_roots()):
        raise _refusal(text)
    if not resolved.exists():
        raise SourceMissing(f"{text} does not exist")
    return resolved


def check_source_tree(path: Path, *, any_path: bool) -> None:
    """Refuse a folder source holding a link that leads out of the import roots.

    Run by the worker before it reads the source (walking a large zarr or precomputed folder
    can take seconds, too long for a request); a file source needs no walk.
    """
    if any_path or not path.is_dir():
        return
    roots = import_roots()
    seen = 0
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            seen += 1
            if seen > MAX_TREE_ENTRIES:
                raise PathNotAllowed(f"{path} holds more than {MAX_TREE_ENTRIES} entries; "
                                     "split it or ask a superuser to import it")
            entry = Path(folder) / name
            if entry.is_symlink() and _outside(entry.resolve(), roots):
                raise PathNotAllowed(
                    f"{entry.relative_to(path)} inside {path} is a link to a place outside the "
                    "import roots")


# --- exports -------------------------------------------------------------------------------------

#: The kinds of the jobs that write one file for download with :func:`export_target`.
EXPORT_KIND_PREFIX = "export_"


def is_export(kind: str) -> bool:
    return kind.startswith(EXPORT_KIND_PREFIX)


def export_folder(job) -> Path:
    """The folder of one export job's file: ``DATA_ROOT/datasets/<id>/exports/job-<id>/``."""
    return Path(settings.DATA_ROOT) / "datasets" / str(job.dataset_id) / "exports" / f"job-{job.pk}"


def safe_file_name(text: str) -> str:
    """``text`` with everything but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    name = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in text)
    return name.lstrip(".") or "export"


def export_file(job) -> Path | None:
    """The one regular file in the job's export folder, or None."""
    folder = export_folder(job)
    if not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    return files[0] if len(files) == 1 else None


def export_download(job) -> dict:
    """What an export job's result says of its file: its name and where to download it."""
    return {"file": export_file(job).name, "download": f"/api/jobs/{job.pk}/download/"}


def export_remove(job) -> None:
    shutil.rmtree(export_folder(job), ignore_errors=True)


@contextmanager
def export_target(job, name: str):
    """Yield the path to write one export file to; it becomes the job's file on success.

    The file is written in the run's staging folder (``staging/job-<id>-a<attempt>-...``) and
    moved into the job's export folder at the end, replacing what was there; on any error (a
    cancel included) the staging goes, so a failed export leaves nothing behind, and what a
    worker that died left is removed by the job sweep like any staging.
    """
    from connectome.datasets.services import remove_staged, staging_path

    staged = staging_path(dataset=job.dataset, job=job)
    staged.mkdir()
    written = staged / safe_file_name(name)
    try:
        yield written
        folder = export_folder(job)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        written.replace(folder / written.name)
    finally:
        remove_staged(staged)
