"""The web page: ``GET /`` (``/ui`` redirects there) and its files under ``/static/``.

The page is plain ES modules and CSS shipped in ``edge/static`` (nothing fetched from elsewhere,
so it works offline). It talks to the same edge's API with the caller's key, which the browser
keeps; these routes themselves carry no tenant data and need no key (edge.gate ``PUBLIC_PATHS``).

Every response carries a Content-Security-Policy allowing only this origin (CSP Level 3,
``default-src 'self'``; no inline script or style, no framing), ``X-Content-Type-Options:
nosniff`` and ``Referrer-Policy: no-referrer``. Static files are read once at import, served only
by their exact names (no path from the request ever reaches the file system), with their content
type and a strong ETag (RFC 9110 §8.8.3; ``If-None-Match`` answers 304).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from quart import Blueprint, Response, request

from edge.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/static/"
PAGE_PATHS = frozenset({"/", "/ui", "/ui/"})
"""The page's own paths (edge.gate lets them and ``STATIC_PREFIX`` through without a key)."""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # RFC 9239 §6
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate with the ETag: a new edge version is seen at once
}

bp = Blueprint("ui", __name__)


@dataclass(frozen=True)
class StaticFile:
    """One shipped file: its bytes, content type and ETag (a quoted SHA-256 prefix)."""

    body: bytes
    content_type: str
    etag: str


def load_static(directory: Path = STATIC_DIR) -> dict[str, StaticFile]:
    """Every file directly in ``directory`` whose suffix has a known content type, by file name."""
    files: dict[str, StaticFile] = {}
    for path in sorted(directory.iterdir()):
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None:
            body = path.read_bytes()
            files[path.name] = StaticFile(body, content_type, etag_of(body))
    return files


def etag_of(body: bytes) -> str:
    """A strong ETag for ``body``: a quoted SHA-256 prefix."""
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


FILES = load_static()


def serve(file: StaticFile, headers: dict[str, str] = SECURITY_HEADERS) -> Response:
    """``file`` with ``headers`` (default: the page's security headers) and its ETag; 304 when
    ``If-None-Match`` has it."""
    if file.etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
        return Response(b"", status=304, headers={**headers, "ETag": file.etag})
    return Response(file.body, content_type=file.content_type, headers={**headers, "ETag": file.etag})


@bp.get("/")
async def page() -> Response:
    """``GET /``: the page (``index.html``)."""
    return serve(FILES["index.html"])


@bp.get("/ui")
@bp.get("/ui/")
async def ui_redirect() -> Response:
    """``GET /ui``: 308 to ``/``, the page's one address."""
    return Response(b"", status=308, headers={"Location": "/"})


@bp.get(f"{STATIC_PREFIX}<name>")
async def static_file(name: str) -> Response:
    """``GET /static/{name}``: a shipped file; 404 (JSON error naming ``name``) for any other name."""
    file = FILES.get(name)
    if file is None or name == "index.html":
        raise ApiError(404, "not_found", f"no static file {name[:80]!r}", "name")
    return serve(file)
