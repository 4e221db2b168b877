"""The Neuroglancer client: its built files and the idle event stream it expects.

The ``neuroglancer`` Python package ships a built client (``static/client/``) made for its own
server: the page finds a token in its URL (``.../v/<token>/``) and opens an event stream at
``.../events/<token>`` for state pushed from Python. We push nothing, so the stream only says
hello and stays quiet for a bounded time; the client then reconnects on its own.
"""

import mimetypes
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import neuroglancer

# How long one event stream holds a server thread before it ends and the client reconnects.
EVENT_STREAM_SECONDS = 25.0
_EVENT_POLL_SECONDS = 5.0

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".svg": "image/svg+xml",
}


@cache
def client_root() -> Path:
    """Folder of the built client inside the installed ``neuroglancer`` package."""
    root = Path(neuroglancer.__file__).resolve().parent / "static" / "client"
    if not (root / "index.html").is_file():
        raise FileNotFoundError(f"{root}: no built Neuroglancer client (index.html missing)")
    return root


def client_file(path: str) -> Path | None:
    """The client file at the relative ``path`` ("" is index.html), or None.

    None for anything that is not a regular file inside the client folder, so ``..``, absolute
    paths and links out of the folder are refused like missing files.
    """
    root = client_root()
    if path in ("", "/"):
        path = "index.html"
    if path.startswith("/") or "\\" in path or "\x00" in path:
        return None
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix) or (
        mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    )


def idle_events(*, seconds: float = EVENT_STREAM_SECONDS,
                poll: float = _EVENT_POLL_SECONDS) -> Iterator[bytes]:
    """Server-sent events with no data: a comment at once, keep-alive comments, then the end.

    The comments make the browser report the stream open (and the proxy keep it), and a
    closed connection surfaces as an error on the next write instead of after ``seconds``.
    """
    yield b": connectome viewer\n\n"
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(poll, left))
        yield b": keep-alive\n\n"
