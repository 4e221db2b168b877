"""A Python client of the Connectome REST API, in the manner of CAVEclient and neuprint-python:
datasets, cells, partners, synapses and the wiring matrix as pandas DataFrames.

    >>> from connectome_client import Client
    >>> client = Client("http://127.0.0.1:8000", token="...")
    >>> client.synapses(1, pre=[12, 13], min_confidence=0.8)
"""

from connectome_client.client import (
    Client,
    ConnectomeError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)

__all__ = ["Client", "ConnectomeError", "InvalidRequest", "NotFound", "PermissionDenied"]
