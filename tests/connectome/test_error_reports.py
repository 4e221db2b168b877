"""Error reports of segmentation layers: the stored file, the API, the cells page and the
viewer links of its rows."""

import json
import re
from html import unescape
from urllib.parse import urlsplit

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse

from connectome.cells.reports import (
    error_report,
    report_relative_path,
    store_error_report,
)
from connectome.datasets.models import Layer, Membership
from connectome.viewer.state import PANEL_PIXELS
from detection.cells.evaluation import likely_errors, locate_errors, overlap_report
from detection.errors import InputError
from tests.connectome.factories import (
    CellFactory,
    DatasetFactory,
    MembershipFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

SHAPE = (8, 10, 40)
VOXEL = (40.0, 8.0, 8.0)


def volumes():
    """Bodies 1, 2, 3; cell 10 merges bodies 1 and 2, body 3 is split into cells 20 and 21
    (a large id, beyond int64)."""
    gt = np.zeros(SHAPE, dtype=np.uint64)
    gt[..., 0:10], gt[..., 12:18], gt[..., 20:32] = 1, 2, 3
    seg = np.zeros_like(gt)
    seg[..., 0:18] = 10
    seg[..., 18:26] = 20
    seg[..., 26:40] = 2**63 + 21
    return seg, gt


def _layer(dataset, name="cells", kind=Layer.Kind.SEGMENTATION):
    return Layer.objects.create(
        dataset=dataset, name=name, kind=kind, dtype="uint64", shape_z=SHAPE[0],
        shape_y=SHAPE[1], shape_x=SHAPE[2], chunk_z=8, chunk_y=10, chunk_x=40,
        storage_path=f"datasets/{dataset.pk}/layers/{name}.zarr")


@pytest.fixture
def world(data_root):
    dataset = DatasetFactory(is_public=True, voxel_size_z=VOXEL[0], voxel_size_y=VOXEL[1],
                             voxel_size_x=VOXEL[2], shape_z=SHAPE[0], shape_y=SHAPE[1],
                             shape_x=SHAPE[2])
    layer = _layer(dataset)
    cell = CellFactory(dataset=dataset, layer=layer, segment_id=10, centroid_z=120.0,
                       centroid_y=36.0, centroid_x=68.0)
    seg, gt = volumes()
    rows = overlap_report(seg, gt, min_voxels=50)
    private = DatasetFactory(name="secret", is_public=False, shape_z=SHAPE[0],
                             shape_y=SHAPE[1], shape_x=SHAPE[2])
    hidden = _layer(private)
    store_error_report(hidden, rows)
    return {"dataset": dataset, "layer": layer, "cell": cell, "rows": rows, "seg": seg,
            "private": private, "hidden": hidden, "root": data_root}


def _user(**fields):
    user = UserFactory(**fields)
    user.save()  # the factory sets the password without saving it; sessions check it
    return user


def _client(user=None):
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


def _errors_url(dataset, layer, **query):
    url = reverse("layer-errors", args=[dataset.pk, layer.pk])
    return url + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def _state_of(client, viewer_link: str) -> dict:
    """Open a row's viewer link as the client does: fetch the state URL after ``#!``."""
    assert "/ng/v/connectome/#!http://testserver/viewer/state/datasets/" in viewer_link
    state_url = urlsplit(viewer_link.split("#!", 1)[1])
    response = client.get(state_url.path + "?" + state_url.query)
    assert response.status_code == 200, response.content
    return response.json()


# --------------------------------------------------------------------------------------------
# Storing


def test_store_writes_the_file_under_the_layer_and_records_it(world):
    layer, rows = world["layer"], world["rows"]
    record = store_error_report(layer, rows, job=None)
    relative = f"datasets/{layer.dataset_id}/layers/{layer.pk}/error_report.json"
    assert record == {"path": relative, "rows": 2, "kind": "ground_truth", "job": None}
    layer.refresh_from_db()
    assert layer.parameters["error_report"] == record
    document = json.loads((world["root"] / relative).read_text())
    assert document["kind"] == "ground_truth" and document["layer"] == layer.pk
    merge, split = document["rows"]
    # Segment ids as strings: uint64 beyond what a JSON number holds.
    assert merge["cells"] == ["10"] and merge["truth"] == ["1", "2"]
    assert split["cells"] == ["20", str(2**63 + 21)] and split["truth"] == ["3"]
    assert split["bbox"] == rows[1]["bbox"] and split["point"] == rows[1]["point"]
    assert split["bits"] == pytest.approx(rows[1]["bits"])
    # Nothing else is left in the folder (the file was written aside and moved in).
    assert [p.name for p in (world["root"] / relative).parent.iterdir()] == ["error_report.json"]


def test_likely_errors_replace_the_report_and_keep_its_place(world):
    layer, seg = world["layer"], world["seg"]
    store_error_report(layer, world["rows"])
    cells = {"id": np.array([10, 20, 2**63 + 21], dtype=np.uint64),
             "voxels": np.array([1280, 480, 1120]),
             "last_merge": np.array([0.45, np.nan, 0.2], dtype=np.float32)}
    edges = {"a": np.array([10, 20], dtype=np.uint64),
             "b": np.array([20, 2**63 + 21], dtype=np.uint64),
             "score": np.array([0.7, 0.52], dtype=np.float32),
             "contact": np.array([80, 80])}
    rows = locate_errors(likely_errors(edges, cells, threshold=0.5, margin=0.1), seg)
    record = store_error_report(layer, rows)
    assert record["kind"] == "likely" and record["rows"] == 2
    report = error_report(layer)
    assert [(r["kind"], r["cells"]) for r in report.rows] == [
        ("split", ["20", str(2**63 + 21)]), ("merge", ["10"])]
    # The split's voxel: on cell 20's side of its contact with the other cell (x 25 | 26).
    assert report.rows[0]["point"][2] == 25
    assert report.rows[0]["confidence"] == pytest.approx(0.8, abs=1e-5)
    # The merge's: cell 10's voxel nearest its centroid.
    assert report.rows[1]["bbox"] == [[0, 0, 0], [8, 10, 18]]
    assert report.rows[1]["confidence"] == pytest.approx(0.5, abs=1e-5)
    assert (world["root"] / record["path"]).parent == (
        world["root"] / report_relative_path(layer)).parent


@pytest.mark.parametrize(("row", "message"), [
    ({"kind": "merge", "cells": [1], "colour": "red"}, "row 0: unknown field colour"),
    ({"kind": "glue", "cells": [1]}, "row 0: kind must be 'merge' or 'split', got 'glue'"),
    ({"kind": "merge", "cells": [1, 2]}, "row 0: a merge names one cell in cells, got 2"),
    ({"kind": "split", "cells": [1]}, "row 0: a split names two cells or more in cells, got 1"),
    ({"kind": "merge", "cells": [-1]}, "row 0, cells: -1 is outside the uint64 range"),
    ({"kind": "merge", "cells": ["x"]}, "row 0, cells: 'x' is not a segment id"),
    ({"kind": "merge", "cells": [1], "point": [8, 0, 0]},
     r"row 0, point: voxel \(8, 0, 0\) lies outside the layer's shape \(8, 10, 40\)"),
    ({"kind": "merge", "cells": [1], "bbox": [[0, 0, 5], [8, 10, 5]]},
     "row 0, bbox: .* is not a half-open box"),
    ({"kind": "merge", "cells": [1], "voxels": [1, 2]}, "row 0: voxels has 2 values for 1"),
    ({"kind": "merge", "cells": [1], "confidence": 1.5},
     r"row 0, confidence: 1.5 is outside \[0, 1\]"),
    ({"kind": "merge", "cells": [1], "score": float("nan")},
     "row 0, score: nan is not a finite number"),
    ({"kind": "merge", "cells": [1], "contact": 2.5}, "row 0, contact: 2.5 is not a count"),
    ("merge", "row 0: expected a dict, got str"),
])
def test_bad_rows_are_named_and_store_nothing(world, row, message):
    layer = world["layer"]
    good = {"kind": "split", "cells": [1, 2]}
    with pytest.raises(InputError, match=message.replace("row 0", "row 1")):
        store_error_report(layer, [good, row])
    layer.refresh_from_db()
    assert "error_report" not in layer.parameters
    assert not (world["root"] / report_relative_path(layer)).exists()


def test_reports_belong_to_segmentation_layers(world):
    em = _layer(world["dataset"], name="em", kind=Layer.Kind.EM)
    with pytest.raises(InputError, match="layer 'em' is a em layer; error reports belong"):
        store_error_report(em, world["rows"])
    with pytest.raises(InputError, match="kind must be one of likely, ground_truth"):
        store_error_report(world["layer"], world["rows"], kind="guess")


def test_a_failed_record_leaves_the_old_report_whole(world, monkeypatch):
    layer = world["layer"]
    store_error_report(layer, world["rows"])
    path = world["root"] / report_relative_path(layer)
    before = path.read_bytes()

    def refuse(*args, **kwargs):
        raise RuntimeError("database gone")

    monkeypatch.setattr(Layer, "save", refuse)
    with pytest.raises(RuntimeError, match="database gone"):
        store_error_report(layer, world["rows"][:1])
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["error_report.json"]


# --------------------------------------------------------------------------------------------
# API


def test_api_lists_the_rows_worst_first_with_the_viewer_at_each(world, client):
    dataset, layer = world["dataset"], world["layer"]
    store_error_report(layer, world["rows"])
    response = client.get(_errors_url(dataset, layer))
    assert response.status_code == 200
    body = response.json()
    assert (body["dataset"], body["layer"], body["kind"], body["rows"]) == (
        dataset.pk, layer.pk, "ground_truth", 2)
    assert body["next"] is None and body["previous"] is None
    merge, split = body["results"]
    assert (merge["rank"], merge["kind"], merge["cells"]) == (1, "merge", ["10"])
    assert merge["cell_ids"] == [world["cell"].pk]
    assert split["cell_ids"] == [None, None]  # no cell rows for 20 and 2**63 + 21
    assert merge["position"] == world["rows"][0]["point"]
    # The merge's box is 18 voxels of 8 nm wide (with a margin: 172.8 nm): the narrowest
    # field, 2 um.
    assert merge["field_nm"] == 2000.0
    # The link opens the dataset state: the cells selected in the report's layer, centred on
    # the row's voxel.
    state = _state_of(client, split["viewer"])
    (cells_layer,) = [entry for entry in state["layers"] if entry["name"] == layer.name]
    assert cells_layer["segments"] == ["20", str(2**63 + 21)]
    z, y, x = split["point"]
    assert state["position"] == [x + 0.5, y + 0.5, z + 0.5]
    assert state["selectedLayer"]["layer"] == layer.name


def test_api_pages_follow_next_and_filter_by_kind(world, client):
    dataset, layer = world["dataset"], world["layer"]
    rows = [{"kind": "merge" if i % 3 else "split", "cells": [i + 1] if i % 3 else [i, i + 1],
             "confidence": 1 - i / 10, "point": [0, 0, i]} for i in range(7)]
    store_error_report(layer, rows)
    seen, url = [], _errors_url(dataset, layer, page_size=3)
    while url:
        body = client.get(url).json()
        seen += [row["rank"] for row in body["results"]]
        url = body["next"]
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    body = client.get(_errors_url(dataset, layer, page_size=2, kind="split")).json()
    assert body["rows"] == 3  # ranks 1, 4, 7
    assert [row["rank"] for row in body["results"]] == [1, 4]
    second = client.get(body["next"]).json()
    assert [row["rank"] for row in second["results"]] == [7]
    assert second["next"] is None
    back = client.get(second["previous"]).json()
    assert [row["rank"] for row in back["results"]] == [1, 4]
    response = client.get(_errors_url(dataset, layer, kind="glue"))
    assert response.status_code == 400 and "kind" in response.json()["detail"]


def test_api_follows_dataset_permissions(world):
    private, hidden = world["private"], world["hidden"]
    url = _errors_url(private, hidden)
    assert _client().get(url).status_code == 404
    outsider = _user()
    assert _client(outsider).get(url).status_code == 404
    member = _user()
    MembershipFactory(dataset=private, user=member, role=Membership.Role.VIEWER)
    assert _client(member).get(url).status_code == 200
    staff = _user(is_staff=True)
    assert _client(staff).get(url).json()["rows"] == 2
    # A layer of another dataset, a layer without a report, an id out of range: 404 too.
    assert _client(staff).get(_errors_url(world["dataset"], hidden)).status_code == 404
    response = _client().get(_errors_url(world["dataset"], world["layer"]))
    assert response.status_code == 404
    assert f"layer {world['layer'].pk} has no error report" in response.json()["error"]
    assert _client().get(f"/api/datasets/{2**63}/layers/1/errors/").status_code == 404


def test_a_row_without_a_voxel_is_shown_at_its_cell(world, client):
    dataset, layer = world["dataset"], world["layer"]
    store_error_report(layer, [{"kind": "merge", "cells": [10], "confidence": 0.5}])
    (row,) = client.get(_errors_url(dataset, layer)).json()["results"]
    # The centroid of cell 10 (120, 36, 68 nm) in voxels of 40 x 8 x 8 nm.
    assert row["point"] is None and row["position"] == [3, 4, 8]
    state = _state_of(client, row["viewer"])
    assert state["position"] == [8.5, 4.5, 3.5]


# --------------------------------------------------------------------------------------------
# The cells page


def _page_text(response) -> str:
    html = response.content.decode()
    html = re.sub(r"<script.*?</script>", " ", html, flags=re.DOTALL)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_cells_page_lists_the_rows_with_working_links(world, client):
    dataset, layer, cell = world["dataset"], world["layer"], world["cell"]
    response = client.get(reverse("web:cells", args=[dataset.pk]))
    assert "No error report yet" in _page_text(response)
    store_error_report(layer, world["rows"])
    response = client.get(reverse("web:cells", args=[dataset.pk]))
    assert response.status_code == 200
    text = _page_text(response)
    assert "Likely errors" in text and "2 of 2 rows" in text
    bits = world["rows"][0]["bits"]
    assert f"1 merge of bodies 1, 2 10 {bits:.4f} 1280" in text
    assert f"2 split of body 3 20, {2**63 + 21}" in text
    html = response.content.decode()
    section = html[html.index('id="likely-errors"'):]
    # Cell 10 exists: linked to its page, which opens.
    cell_page = reverse("web:cell", args=[dataset.pk, cell.pk])
    assert f'href="{cell_page}"' in section
    assert client.get(cell_page).status_code == 200
    links = [unescape(link) for link in re.findall(r'href="([^"]*/ng/v/[^"]*)"', section)]
    assert len(links) == 2
    for link, row in zip(links, world["rows"]):
        state = _state_of(client, link)
        (cells_layer,) = [entry for entry in state["layers"] if entry["name"] == layer.name]
        assert cells_layer["segments"] == [str(c) for c in row["cells"]]
        z, y, x = row["point"]
        assert state["position"] == [x + 0.5, y + 0.5, z + 0.5]


def test_cells_page_of_a_private_dataset_shows_its_report_to_members_only(world):
    private = world["private"]
    url = reverse("web:cells", args=[private.pk])
    assert _client().get(url).status_code == 404
    member = _user()
    MembershipFactory(dataset=private, user=member, role=Membership.Role.VIEWER)
    text = _page_text(_client(member).get(url))
    assert "1 merge of bodies 1, 2" in text


# --------------------------------------------------------------------------------------------
# The dataset state's focus


@pytest.mark.parametrize(("query", "name"), [
    ("layer=999999", "layer"),
    ("layer=abc", "layer"),
    ("segments=1,x", "segments"),
    (f"segments={2**64}", "segments"),
    ("segments=", "segments"),
    ("position=1,2", "position"),
    ("position=8,0,0", "position"),
    ("field_nm=-3", "field_nm"),
    ("field_nm=nan", "field_nm"),
])
def test_dataset_state_names_a_wrong_focus(world, client, query, name):
    url = reverse("viewer:dataset-state", args=[world["dataset"].pk])
    response = client.get(f"{url}?{query}")
    assert response.status_code == 400
    assert list(response.json()) == [name]


def test_dataset_state_of_an_em_layer_selects_nothing(world, client):
    em = _layer(world["dataset"], name="em", kind=Layer.Kind.EM)
    url = reverse("viewer:dataset-state", args=[world["dataset"].pk])
    assert client.get(f"{url}?layer={em.pk}&segments=10").status_code == 400
    state = client.get(f"{url}?segments=10&field_nm=1000").json()
    (cells_layer,) = [entry for entry in state["layers"] if entry["name"] == "cells"]
    assert cells_layer["segments"] == ["10"]
    # The field of view: 1000 nm across a panel of the 4-panel layout, in 8 nm voxels.
    assert state["crossSectionScale"] == pytest.approx(1000 / PANEL_PIXELS["4panel"] / 8)
