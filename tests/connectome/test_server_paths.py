"""Server paths: what import jobs may read, where exports write, what errors reveal.

A dataset admin who is not a superuser reads only under ``IMPORT_ROOTS`` (every escape tried:
absolute paths, ``..``, links out of a root, links inside a folder source, a file swapped for
a link after the job was accepted); exports write only inside the dataset's own folder and are
downloaded over the API and the dataset page by those who may see the dataset.
"""

import csv
import io
import os
import re
import zipfile

import numpy as np
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from connectome.cells.models import Skeleton
from connectome.datasets.models import Membership
from connectome.imports.skeletons import import_skeletons
from connectome.jobs.models import Job
from connectome.jobs.services import job_create, job_execute, job_run_inline
from connectome.synapses.models import SynapseRun
from detection.io.swc import SkeletonNodes, read_swc, write_swc
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    SynapseFactory,
    SynapseRunFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

EDGES = "pre,post,type,synapses\nAVAL,AVAR,chemical,3\nAVAR,AVAL,electrical,1\n"


@pytest.fixture
def roots(settings, tmp_path):
    """One import root, ``incoming/``, beside a folder of files that must stay unreadable."""
    incoming = tmp_path / "incoming"
    outside = tmp_path / "outside"
    incoming.mkdir()
    outside.mkdir()
    (outside / "secret.csv").write_text("pre,post,type,synapses\nsecret-cell,B,chemical,1\n")
    settings.IMPORT_ROOTS = [incoming.resolve()]
    return incoming, outside


@pytest.fixture
def lab(data_root):
    """A private dataset with its admin (not a superuser) and a viewer, logged in clients."""
    dataset = DatasetFactory(is_public=False)
    users = {}
    for role in ("admin", "reviewer", "viewer"):
        users[role] = UserFactory()
        MembershipFactory(dataset=dataset, user=users[role], role=role)
    users["superuser"] = UserFactory(is_superuser=True, is_staff=True)
    return dataset, users


def _client(user=None):
    """A client logged in as ``user`` (a session: the API and the pages see the same user)."""
    client = APIClient()
    if user is not None:
        user.save()  # the factory's password, so that the session's hash matches
        client.force_login(user)
    return client


def _import(client, dataset, source, run_name="edges"):
    return client.post("/api/jobs/", {"kind": "import_synapses", "dataset": dataset.pk,
                                      "parameters": {"source": str(source),
                                                     "table_format": "edges",
                                                     "run_name": run_name,
                                                     "create_missing_cells": True}},
                       format="json")


def _refusal(response) -> str:
    assert response.status_code == 400, response.content
    return response.json()["detail"]["parameters"]["source"][0]


# --- reading -----------------------------------------------------------------------------------

def test_a_dataset_admin_cannot_read_server_files_and_learns_nothing_of_them(roots, lab):
    incoming, outside = roots
    dataset, users = lab
    client = _client(users["admin"])
    secrets = [os.environ.get("PATH", ""), "root:x:0:0", "secret-cell"]
    attempts = {
        "/proc/self/environ": True, "/etc/passwd": True, str(outside / "secret.csv"): True,
        str(incoming / ".." / "outside" / "secret.csv"): True,
        "/no/such/folder/secret.csv": False, str(outside / "missing.csv"): False,
    }
    messages = {}
    for path, exists in attempts.items():
        assert os.path.exists(path) == exists
        response = _import(client, dataset, path)
        body = response.content.decode()
        assert not any(secret and secret in body for secret in secrets)
        messages[path] = _refusal(response)
        assert messages[path] == (
            f"{path} is not under the import roots ({incoming.resolve()}); put the file there, "
            "or ask a superuser to import it")
    assert not Job.objects.exists() and not SynapseRun.objects.exists()


def test_links_out_of_a_root_and_relative_paths_are_refused(roots, lab):
    incoming, outside = roots
    dataset, users = lab
    client = _client(users["admin"])
    (incoming / "link.csv").symlink_to(outside / "secret.csv")
    (incoming / "passwd.csv").symlink_to("/etc/passwd")
    (incoming / "out").symlink_to(outside, target_is_directory=True)
    for path in (incoming / "link.csv", incoming / "passwd.csv", incoming / "out" / "secret.csv"):
        assert "is not under the import roots" in _refusal(_import(client, dataset, path))
    (incoming / "table.csv").write_text(EDGES)
    assert _refusal(_import(client, dataset, "table.csv")) == (
        "table.csv is a relative path; give the full path under the import roots")
    assert not Job.objects.exists()


def test_inside_the_roots_an_admin_imports_and_a_missing_file_is_named(roots, lab,
                                                                      django_capture_on_commit_callbacks):
    incoming, _ = roots
    dataset, users = lab
    client = _client(users["admin"])
    assert _refusal(_import(client, dataset, incoming / "nope.csv")) == (
        f"{incoming / 'nope.csv'} does not exist")
    (incoming / "sub").mkdir()
    (incoming / "sub" / "table.csv").write_text(EDGES)
    # A link that stays inside the root is fine; so is a detour through "..".
    (incoming / "alias.csv").symlink_to(incoming / "sub" / "table.csv")
    response = _import(client, dataset, incoming / "sub" / ".." / "alias.csv")
    assert response.status_code == 201, response.json()
    job = job_execute(job_id=response.json()["id"])
    assert job.state == Job.State.DONE, job.error
    assert job.parameters["source"] == str(incoming / "sub" / "table.csv")
    assert SynapseRun.objects.get(dataset=dataset, name="edges").synapses.count() == 4


def test_a_superuser_and_the_shell_may_read_outside_the_roots(roots, lab):
    _, outside = roots
    dataset, users = lab
    response = _import(_client(users["superuser"]), dataset, outside / "secret.csv", "su")
    assert response.status_code == 201, response.json()
    assert Job.objects.get(pk=response.json()["id"]).reads_any_path
    assert job_execute(job_id=response.json()["id"]).state == Job.State.DONE
    job = job_run_inline(kind="import_synapses", dataset=dataset,
                         parameters={"source": str(outside / "secret.csv"), "run_name": "shell",
                                     "create_missing_cells": True})
    assert job.state == Job.State.DONE and job.reads_any_path


def test_a_file_swapped_for_a_link_after_submission_is_refused_by_the_worker(roots, lab):
    incoming, outside = roots
    dataset, users = lab
    table = incoming / "table.csv"
    table.write_text(EDGES)
    response = _import(_client(users["admin"]), dataset, table)
    assert response.status_code == 201
    table.unlink()
    table.symlink_to(outside / "secret.csv")
    job = job_execute(job_id=response.json()["id"])
    assert job.state == Job.State.FAILED
    assert job.error == (f"{table} is not under the import roots ({incoming.resolve()}); put the "
                         "file there, or ask a superuser to import it")
    assert not SynapseRun.objects.filter(dataset=dataset).exists()


def _swc(n=4) -> SkeletonNodes:
    return SkeletonNodes(
        node_id=np.arange(1, n + 1), parent_id=np.arange(0, n) - (np.arange(n) == 0),
        zyx=np.arange(3 * n, dtype=float).reshape(n, 3) * 10,
        radius=np.full(n, 5, np.float32), compartment=np.zeros(n, np.int16))


def test_a_folder_source_with_a_link_out_of_the_roots_imports_nothing(roots, lab,
                                                                     django_capture_on_commit_callbacks):
    incoming, outside = roots
    dataset, users = lab
    for segment in (7, 8):
        CellFactory(dataset=dataset, segment_id=segment)
    folder = incoming / "swc"
    folder.mkdir()
    write_swc(folder / "7.swc", _swc())
    write_swc(outside / "8.swc", _swc())
    (folder / "8.swc").symlink_to(outside / "8.swc")
    response = _client(users["admin"]).post(
        "/api/jobs/", {"kind": "import_skeletons", "dataset": dataset.pk,
                       "parameters": {"source": str(folder)}}, format="json")
    assert response.status_code == 201
    job = job_execute(job_id=response.json()["id"])
    assert job.state == Job.State.FAILED
    assert job.error == f"8.swc inside {folder} is a link to a place outside the import roots"
    assert not Skeleton.objects.exists()


def test_the_default_roots_are_the_incoming_folder_of_the_var_dir(tmp_path):
    import subprocess
    import sys

    from django.conf import settings

    code = ("import django, os; os.environ.setdefault('DJANGO_SETTINGS_MODULE', "
            "'connectome.settings'); django.setup(); from django.conf import settings as s; "
            "print([str(p) for p in s.IMPORT_ROOTS])")
    env = {k: v for k, v in os.environ.items() if k != "IMPORT_ROOTS"}
    env["CONNECTOME_VAR_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([str(tmp_path / "incoming")])
    assert (tmp_path / "incoming").is_dir()
    env["IMPORT_ROOTS"] = ""
    out = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- exports -----------------------------------------------------------------------------------

def test_exports_take_no_target_and_write_nothing_outside_the_dataset_folder(roots, lab, tmp_path):
    dataset, users = lab
    client = _client(users["admin"])
    target = tmp_path / "anywhere.csv"
    for kind, parameters in (
            ("export_synapses", {"table_format": "cnapse", "target": str(target)}),
            ("export_skeletons", {"target": str(tmp_path / "folder")})):
        response = client.post("/api/jobs/", {"kind": kind, "dataset": dataset.pk,
                                              "parameters": parameters}, format="json")
        assert response.status_code == 400
        assert response.json()["detail"]["parameters"]["target"][0].startswith(
            f"not a parameter of {kind} jobs; they take ")
    assert not target.exists() and not (tmp_path / "folder").exists()
    assert not Job.objects.exists()


def _files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def synapses(lab):
    dataset, _ = lab
    run = SynapseRunFactory(dataset=dataset, name="run 1")
    for pre, post in ((11, 12), (11, 13), (12, 13)):
        SynapseFactory(run=run, pre=CellFactory(dataset=dataset, segment_id=pre, name=f"c{pre}")
                       if not dataset.cells.filter(segment_id=pre).exists()
                       else dataset.cells.get(segment_id=pre),
                       post=CellFactory(dataset=dataset, segment_id=post, name=f"c{post}")
                       if not dataset.cells.filter(segment_id=post).exists()
                       else dataset.cells.get(segment_id=post))
    return run


def test_an_export_is_written_in_its_job_folder_and_downloaded(lab, synapses, data_root):
    dataset, users = lab
    job = job_run_inline(kind="export_synapses", dataset=dataset, user=users["admin"],
                         parameters={"table_format": "edges", "run_name": "run 1"})
    assert job.state == Job.State.DONE, job.error
    name = f"synapses-{dataset.name}-run_1-edges.csv"
    assert job.result == {"rows": 3, "file": name, "download": f"/api/jobs/{job.pk}/download/"}
    assert _files_under(data_root) == [f"datasets/{dataset.pk}/exports/job-{job.pk}/{name}"]
    response = _client(users["viewer"]).get(job.result["download"])
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="{name}"'
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted((r["pre"], r["post"], r["synapses"]) for r in rows) == [
        ("c11", "c12", "1"), ("c11", "c13", "1"), ("c12", "c13", "1")]

    job.delete()   # the file goes with its job
    assert _files_under(data_root) == []


def test_skeletons_export_as_a_zip_of_swc_files(lab, tmp_path, data_root):
    dataset, users = lab
    cell = CellFactory(dataset=dataset, segment_id=2**63 + 5)
    write_swc(tmp_path / f"{cell.segment_id}.swc", _swc(6))
    import_skeletons(dataset=dataset, source=str(tmp_path / f"{cell.segment_id}.swc"))
    job = job_run_inline(kind="export_skeletons", dataset=dataset, user=users["admin"],
                         parameters={})
    assert job.state == Job.State.DONE, job.error
    assert job.result["skeletons"] == 1
    response = _client(users["viewer"]).get(job.result["download"])
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.namelist() == [f"{cell.segment_id}.swc"]
    (tmp_path / "back").mkdir()
    archive.extractall(tmp_path / "back")
    back = read_swc(tmp_path / "back" / f"{cell.segment_id}.swc")
    np.testing.assert_array_equal(back.zyx, _swc(6).zyx)

    # At the shell, the command copies the export where the operator says.
    call_command("export_skeletons", str(dataset.pk), str(tmp_path / "shell"))
    assert os.listdir(tmp_path / "shell") == [f"{cell.segment_id}.swc"]


def test_a_failed_or_cancelled_export_leaves_no_file(lab, synapses, data_root):
    dataset, users = lab
    failed = job_run_inline(kind="export_synapses", dataset=dataset,
                            parameters={"table_format": "cave", "run_name": "no such run"})
    assert failed.state == Job.State.FAILED
    assert failed.error == f"dataset '{dataset.name}' has no synapse run named 'no such run'"
    job = job_create(kind="export_synapse_table", dataset=dataset, enqueue=False, parameters={})
    Job.objects.filter(pk=job.pk).update(cancel_requested=True, state=Job.State.RUNNING)
    Job.objects.filter(pk=job.pk).update(state=Job.State.QUEUED)
    assert job_execute(job_id=job.pk).state == Job.State.CANCELLED
    assert _files_under(data_root) == []
    assert list((data_root / "datasets" / str(dataset.pk) / "staging").iterdir()) == []
    assert _client(users["viewer"]).get(f"/api/jobs/{failed.pk}/download/").status_code == 404


ROLES = ["anonymous", "outsider", "viewer", "reviewer", "admin", "staff", "superuser"]


@pytest.mark.parametrize("public", [False, True])
def test_downloads_by_role_and_endpoint(lab, synapses, public, data_root):
    """Who may download each export (the API and the dataset page's link) and who may start one."""
    dataset, users = lab
    dataset.is_public = public
    dataset.save()
    users["outsider"] = UserFactory()
    users["staff"] = UserFactory(is_staff=True)
    kinds = {"export_synapses": {"table_format": "cnapse"},
             "export_synapse_table": {"table_format": "parquet"},
             "export_skeletons": {}}
    jobs = {kind: job_run_inline(kind=kind, dataset=dataset, parameters=params)
            for kind, params in kinds.items()}
    assert all(job.state == Job.State.DONE for job in jobs.values())
    for role in ROLES:
        client = _client(users.get(role))
        sees = public or role not in ("anonymous", "outsider")
        for kind, job in jobs.items():
            response = client.get(f"/api/jobs/{job.pk}/download/")
            assert response.status_code == (200 if sees else 404), (role, kind)
            if sees:
                assert b"".join(response.streaming_content)
        page = client.get(f"/datasets/{dataset.pk}/")
        assert page.status_code == (200 if sees else 404), role
        if sees:
            for job in jobs.values():
                assert f'href="/api/jobs/{job.pk}/download/"' in page.content.decode()
        may_start = role in ("admin", "staff", "superuser")
        started = client.post("/api/jobs/", {"kind": "export_synapses", "dataset": dataset.pk,
                                             "parameters": {"table_format": "cave"}},
                              format="json")
        expected = 201 if may_start else 404 if role == "outsider" and not public else 403
        assert started.status_code == expected, (role, started.content)


# --- what errors reveal ------------------------------------------------------------------------

def test_viewers_see_the_message_and_only_admins_the_traceback(lab):
    dataset, users = lab
    job = job_run_inline(kind="selftest", dataset=dataset,
                         parameters={"units": 3, "seconds_per_unit": 0, "fail_at": 1})
    assert job.state == Job.State.FAILED
    message = ("internal error (RuntimeError); dataset admins find the details in the job's "
               "traceback")
    for role in ("viewer", "reviewer", "admin", "superuser"):
        body = _client(users[role]).get(f"/api/jobs/{job.pk}/").json()
        assert body["error"] == message
        if role in ("admin", "superuser"):
            assert "RuntimeError: selftest failed on purpose at unit 1" in body["traceback"]
        else:
            assert body["traceback"] == ""
            assert "on purpose" not in str(body)


def test_a_file_that_is_no_table_is_not_copied_into_the_error(lab, monkeypatch,
                                                             django_capture_on_commit_callbacks):
    """A superuser may name any file; a wrong one fails without quoting it to the viewers."""
    dataset, users = lab
    monkeypatch.setenv("CONNECTOME_PROBE_SECRET", "s3cr3t-value-of-the-environment")
    client = _client(users["superuser"])
    for number, path in enumerate(["/proc/self/environ", "/etc/passwd", "/etc/hosts"]):
        response = _import(client, dataset, path, run_name=f"run {number}")
        assert response.status_code == 201, response.json()
        job = job_execute(job_id=response.json()["id"])
        assert job.state == Job.State.FAILED
        # The stored path is resolved (/proc/<pid>/environ); how many fields the first line
        # splits into depends on the machine's environment and files.
        assert re.fullmatch(
            re.escape(f"{job.parameters['source']}: missing required column(s) pre, post, type, "
                      "synapses; found a first line of ") + r"\d+" + re.escape(
                " field(s) that are not column names; expected ['pre', 'post', 'type', "
                "'synapses']"), job.error), job.error
        body = _client(users["viewer"]).get(f"/api/jobs/{job.pk}/").content.decode()
        for secret in ("s3cr3t", "root:x:0", "localhost", os.environ["PATH"]):
            assert secret not in body
