"""The client: one HTTP session, JSON pages in, DataFrames out.

Column types follow the API's conventions (``docs/api.md`` of the server): segment ids are
unsigned 64-bit integers, written as strings by the server and turned into ``uint64`` here
(pandas' nullable ``UInt64`` where a value may be missing, such as the segment of an
unassigned synapse partner); database ids are ``int64`` (nullable ``Int64`` where they may be
missing); positions, sizes, confidences and weights are ``float64`` in nm (z, y, x), NaN
where missing. Columns the server adds that this client does not know come through as the
server sends them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from urllib.parse import urljoin

import numpy as np
import pandas as pd
import requests

#: The most rows the server gives in one page.
MAX_PAGE_SIZE = 10_000

# Column kinds, by name, wherever they appear.
_SEGMENT_COLUMNS = {"segment_id", "pre_segment_id", "post_segment_id"}
_ID_COLUMNS = {"id", "dataset", "run", "pre", "post", "cell", "layer", "pre_cell", "post_cell",
               "site_id", "post_site_id", "external_id", "job", "cells", "synapses",
               "size_voxels", "n_nodes", "outgoing_synapses", "incoming_synapses"}
_FLOAT_COLUMNS = {"pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x", "ctr_z", "ctr_y",
                  "ctr_x", "size_nm3", "contact_area_nm2", "confidence", "weight",
                  "mean_confidence", "centroid_z", "centroid_y", "centroid_x",
                  "cable_length_nm"}
# Synapses count size in voxels as a float (a fraction of a detected volume).
_FLOAT_IN = {"synapses": {"size_voxels"}}

_DATASET_COLUMNS = ["id", "name", "description", "voxel_size", "shape", "is_public",
                    "created_at", "updated_at"]
_CELL_COLUMNS = ["id", "dataset", "segment_id", "name", "cell_type", "layer", "size_voxels",
                 "bbox", "centroid_z", "centroid_y", "centroid_x"]
_RUN_COLUMNS = ["id", "dataset", "name", "method", "parameters", "source_path", "job",
                "created_at"]
_PARTNER_COLUMNS = ["direction", "cell", "segment_id", "name", "cell_type", "synapses",
                    "contact_area_nm2", "weight", "mean_confidence"]
_SYNAPSE_COLUMNS = ["id", "dataset", "run", "kind", "pre", "post", "pre_segment_id",
                    "post_segment_id", "site_id", "post_site_id", "external_id", "pre_z",
                    "pre_y", "pre_x", "post_z", "post_y", "post_x", "ctr_z", "ctr_y", "ctr_x",
                    "size_voxels", "size_nm3", "contact_area_nm2", "confidence", "weight",
                    "flag", "method", "review_state"]
_WIRING_COLUMNS = {
    "cell": ["pre_cell", "post_cell", "pre_segment_id", "post_segment_id", "pre_name",
             "post_name", "pre_type", "post_type", "synapses", "contact_area_nm2", "weight",
             "mean_confidence"],
    "cell_type": ["pre_type", "post_type", "synapses", "contact_area_nm2", "weight",
                  "mean_confidence"],
}
_SEARCH_COLUMNS = ["kind", "dataset", "dataset_name", "id", "name", "segment_id", "cell_type",
                   "cells", "url", "api"]
# Segment ids that are never missing in these tables: numpy uint64, not the nullable UInt64.
_ALWAYS_SEGMENTS = {"cells", "partners", "wiring"}


class ConnectomeError(Exception):
    """An HTTP error from the server.

    Attributes
    ----------
    status : int
        The HTTP status.
    field : str or None
        The parameter the server named as wrong (400s), e.g. ``"bbox"``.
    message : str
        The server's one-line error, e.g. ``"bbox: a bounding box is six numbers ..."``.
    detail : object
        The server's ``detail`` (for 400s, the errors per parameter).
    """

    def __init__(self, *, status: int, method: str, url: str, message: str,
                 field: str | None = None, detail=None):
        self.status, self.method, self.url = status, method, url
        self.message, self.field, self.detail = message, field, detail
        super().__init__(f"HTTP {status} from {method} {url}: {message}")


class InvalidRequest(ConnectomeError, ValueError):
    """400: a parameter is wrong; ``field`` names it."""


class PermissionDenied(ConnectomeError):
    """401 or 403: not logged in, or the role on the dataset does not allow it."""


class NotFound(ConnectomeError, LookupError):
    """404: no such object, or one of a dataset you cannot see."""


_ERRORS = {400: InvalidRequest, 401: PermissionDenied, 403: PermissionDenied, 404: NotFound}


class Client:
    """A connection to a Connectome server.

    Parameters
    ----------
    url : str
        The server's address, e.g. ``"http://127.0.0.1:8000"``.
    token : str, optional
        An API token (``manage.py drf_create_token <user>`` on the server, or the admin's
        *Tokens*). Defaults to the environment variable ``CONNECTOME_TOKEN``; without one the
        client is anonymous and sees public datasets only.
    session : requests.Session, optional
        A session to use, e.g. one already logged in; :meth:`login` makes one from a user
        name and password.
    timeout : float
        Seconds to wait for each response.
    page_size : int
        Rows per page when a list is read page by page (at most 10,000).
    """

    def __init__(self, url: str, token: str | None = None, *,
                 session: requests.Session | None = None, timeout: float = 120.0,
                 page_size: int = MAX_PAGE_SIZE):
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size: 1 to {MAX_PAGE_SIZE}; got {page_size}")
        self.url = url.rstrip("/") + "/"
        self.session = session if session is not None else requests.Session()
        self.session.headers.setdefault("Accept", "application/json")
        token = token if token is not None else os.environ.get("CONNECTOME_TOKEN")
        if token:
            self.session.headers["Authorization"] = f"Token {token}"
        self.timeout = timeout
        self.page_size = page_size

    @classmethod
    def login(cls, url: str, username: str, password: str, **kwargs) -> Client:
        """A client with a session cookie, logged in as a browser logs in
        (``/api-auth/login/``)."""
        client = cls(url, token="", **kwargs)
        login = urljoin(client.url, "api-auth/login/")
        client.session.get(login, timeout=client.timeout).raise_for_status()
        response = client.session.post(login, timeout=client.timeout, data={
            "username": username, "password": password,
            "csrfmiddlewaretoken": client.session.cookies.get("csrftoken", ""), "next": "/api/",
        }, headers={"Referer": login})
        if "sessionid" not in client.session.cookies:
            raise PermissionDenied(status=response.status_code, method="POST", url=login,
                                   message=f"logging in as {username!r} failed")
        return client

    # --- HTTP ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params=None, body=None):
        url = path if path.startswith(("http://", "https://")) else urljoin(self.url, path)
        headers = {}
        csrf = self.session.cookies.get("csrftoken")
        if method != "GET" and csrf:
            # A session login needs Django's CSRF token on writes (and on POST reads).
            headers.update({"X-CSRFToken": csrf, "Referer": url})
        response = self.session.request(method, url, params=_query(params), json=body,
                                        headers=headers, timeout=self.timeout)
        if response.status_code >= 400:
            raise _error(response, method)
        return response.json()

    def _get(self, path: str, **params):
        return self._request("GET", path, params=params)

    def _pages(self, path: str, params: dict) -> Iterator[dict]:
        """Every row of a paged list, following the server's ``next`` links (keyset pages)."""
        body = self._request("GET", path, params={**params, "page_size": self.page_size})
        while True:
            yield from body["results"]
            if not body.get("next"):
                return
            body = self._request("GET", body["next"])

    # --- reads --------------------------------------------------------------------------------

    def datasets(self) -> pd.DataFrame:
        """The datasets you can see: id, name, description, voxel size (nm, z y x), shape,
        public flag, times."""
        return _frame(list(self._pages("api/datasets/", {})), _DATASET_COLUMNS, "datasets")

    def cells(self, dataset: int, *, segment_ids: Iterable[int] | None = None,
              cell_type: str | None = None) -> pd.DataFrame:
        """The cells of a dataset (all, or those with these segment ids or this type)."""
        params = {"dataset": dataset, "segment_id": _listed(segment_ids),
                  "cell_type": cell_type}
        return _frame(list(self._pages("api/cells/", params)), _CELL_COLUMNS, "cells")

    def runs(self, dataset: int | None = None) -> pd.DataFrame:
        """The synapse runs (imports, detections) of a dataset, or of all you can see."""
        return _frame(list(self._pages("api/synapse-runs/", {"dataset": dataset})),
                      _RUN_COLUMNS, "runs")

    def partners(self, cell: int, direction: str = "both", *,
                 run: int | Iterable[int] | None = None, kind: str | None = None,
                 min_confidence: float | None = None,
                 min_count: int | None = None) -> pd.DataFrame:
        """The up- and downstream partner cells of a cell, strongest first, one row each with
        its ``direction`` (``upstream``: presynaptic to the cell)."""
        body = self._get(f"api/cells/{int(cell)}/partners/", direction=direction,
                         run=_listed(run), kind=kind, min_confidence=min_confidence,
                         min_count=min_count)
        rows = [{"direction": side, **row} for side in ("upstream", "downstream")
                for row in body.get(side, [])]
        return _frame(rows, _PARTNER_COLUMNS, "partners")

    def synapses(self, dataset: int | None = None, *, pre: int | Iterable[int] | None = None,
                 post: int | Iterable[int] | None = None,
                 pre_segment_id: int | Iterable[int] | None = None,
                 post_segment_id: int | Iterable[int] | None = None,
                 bbox: Sequence | None = None, run: int | Iterable[int] | None = None,
                 kind: str | None = None, min_confidence: float | None = None,
                 review_state: str | Iterable[str] | None = None,
                 method: str | Iterable[str] | None = None, **filters) -> pd.DataFrame:
        """Synapses, every page of them, as stored (flagged and rejected ones too).

        Parameters
        ----------
        dataset : int
            Needed by the segment-id and bounding-box filters.
        pre, post : int or list of int
            Presynaptic / postsynaptic cell ids.
        pre_segment_id, post_segment_id : int or list of int
            Segment ids (uint64).
        bbox : ((z0, y0, x0), (z1, y1, x1)) or six numbers
            A box in nm, inclusive, on the synapse centre.
        run : int or list of int
            Synapse run ids; ``kind`` (``chemical``, ``electrical``) as the server takes it.
        **filters
            Any other filter of ``/api/synapses/``, passed through.
        """
        params = {"dataset": dataset, "pre": _listed(pre), "post": _listed(post),
                  "pre_segment_id": _listed(pre_segment_id),
                  "post_segment_id": _listed(post_segment_id), "bbox": _box(bbox),
                  "run": _listed(run), "kind": _listed(kind), "min_confidence": min_confidence,
                  "review_state": _listed(review_state), "method": _listed(method),
                  **{name: _listed(value) for name, value in filters.items()}}
        return _frame(list(self._pages("api/synapses/", params)), _SYNAPSE_COLUMNS, "synapses")

    def wiring(self, dataset: int, *, cells: Iterable[int] | None = None,
               segment_ids: Iterable[int] | None = None,
               cell_types: Iterable[str] | None = None, run: int | Iterable[int] | None = None,
               kind: str | None = None, group_by: str = "cell",
               min_confidence: float | None = None, min_count: int | None = None,
               **options) -> pd.DataFrame:
        """The wiring matrix as a long table, one row per (pre, post) pair: cells (or cell
        types with ``group_by="cell_type"``), synapse count, summed contact area and weight,
        mean confidence.

        The selection (``cells``, ``segment_ids`` or ``cell_types``: both partners among
        them; none: the whole dataset) is sent in a POST body, so thousands of cells fit.
        ``df.pivot(index="pre_cell", columns="post_cell", values="synapses")`` makes it a
        matrix.
        """
        body = {"cells": _json_list(cells), "segment_ids": _json_list(segment_ids, str),
                "cell_types": _json_list(cell_types), "run": _json_list(run),
                "kind": kind, "group_by": group_by, "min_confidence": min_confidence,
                "min_count": min_count, **options}
        answer = self._request("POST", f"api/datasets/{int(dataset)}/wiring/",
                               body={k: v for k, v in body.items() if v is not None})
        columns = _WIRING_COLUMNS.get(answer.get("group_by", group_by), [])
        return _frame(answer["rows"], columns, "wiring")

    def search(self, q: str, *, dataset: int | None = None,
               limit: int | None = None) -> pd.DataFrame:
        """What ``q`` names: a whole number finds segments, a synapse and a cell by id; text
        finds datasets, cell types and cells by name. One row per result, ``kind`` first."""
        body = self._get("api/search/", q=q, dataset=dataset, limit=limit)
        return _frame(body["results"], _SEARCH_COLUMNS, "search")


# --- shaping ------------------------------------------------------------------------------------


def _query(params: dict | None) -> dict | None:
    if params is None:
        return None
    return {name: value for name, value in params.items() if value is not None}


def _listed(value) -> str | None:
    """A value or a list of them as the API's comma-separated text."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, int, np.integer, float)):
        return str(value)
    items = [str(int(v)) if isinstance(v, np.integer) else str(v) for v in value]
    return ",".join(items) if items else None


def _json_list(value, kind=None) -> list | None:
    if value is None:
        return None
    if isinstance(value, (str, int, np.integer)):
        value = [value]
    return [kind(int(v)) if kind is str else (int(v) if isinstance(v, np.integer) else v)
            for v in value]


def _box(bbox) -> str | None:
    if bbox is None:
        return None
    values = np.asarray(bbox, dtype=float).ravel()
    if values.size != 6:
        raise ValueError(f"bbox: ((z0, y0, x0), (z1, y1, x1)) in nm; got {values.size} numbers")
    return ",".join(repr(float(v)) for v in values)


def _error(response: requests.Response, method: str) -> ConnectomeError:
    try:
        body = response.json()
    except ValueError:
        body = None
    message, detail, field = response.reason or "error", None, None
    if isinstance(body, dict):
        message = str(body.get("error") or body.get("detail") or message)
        detail = body.get("detail")
        if isinstance(detail, dict):
            named = [name for name in detail if name not in ("detail", "non_field_errors")]
            field = named[0] if named else None
    elif response.text:
        message = response.text.strip().splitlines()[0][:300]
    cls = _ERRORS.get(response.status_code, ConnectomeError)
    return cls(status=response.status_code, method=method, url=response.url, message=message,
               field=field, detail=detail)


def _frame(rows: list[dict], columns: list[str], table: str) -> pd.DataFrame:
    """Rows as a DataFrame: the known columns first, in order, with their types, then any
    others the server sent."""
    frame = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
    for name in columns:
        if name not in frame:
            frame[name] = pd.Series([None] * len(frame), dtype=object)
    frame = frame[[*columns, *(c for c in frame.columns if c not in columns)]]
    floats = _FLOAT_COLUMNS | _FLOAT_IN.get(table, set())
    for name in frame.columns:
        values = frame[name]
        if name in _SEGMENT_COLUMNS:
            frame[name] = _segments(values, nullable=table not in _ALWAYS_SEGMENTS)
        elif name in floats:
            frame[name] = pd.to_numeric(values.astype(object).where(values.notna(), np.nan),
                                        errors="coerce").astype("float64")
        elif name in _ID_COLUMNS:
            frame[name] = _ids(values)
    return frame


def _segments(values: pd.Series, *, nullable: bool) -> pd.Series:
    present = values.notna()
    if not nullable and present.all():
        return pd.Series(np.array([int(v) for v in values], dtype=np.uint64), index=values.index,
                         name=values.name)
    return pd.Series(pd.array([int(v) if ok else None for v, ok in zip(values, present)],
                              dtype="UInt64"), index=values.index, name=values.name)


def _ids(values: pd.Series) -> pd.Series:
    present = values.notna()
    if present.all() and len(values):
        return values.astype("int64")
    return pd.Series(pd.array([int(v) if ok else None for v, ok in zip(values, present)],
                              dtype="Int64"), index=values.index, name=values.name)
