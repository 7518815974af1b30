"""``/docs``: the API reference, rendered by Swagger UI from ``/openapi.yaml``.

Swagger UI's files come from the ``swagger-ui-bundle-v2`` package (PyPI), installed with otpsvc
and served from it: no CDN, no build step, works offline. Served in every mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources

from flask import Blueprint, Response
from swagger_ui_bundle import swagger_ui_path

from otpsvc.errors import NotFound

bp = Blueprint("docs", __name__, url_prefix="/docs")

#: The Swagger UI files the page loads, and their types.
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
OWN = resources.files("otpsvc").joinpath("dev", "static")
OWN_ASSETS = {"docs.js": "text/javascript", "docs.css": "text/css"}


def html_page(name: str, style_src: str = "'self'", form_action: str = "'self'") -> Response:
    """One of the package's pages, allowed to load from this origin only. ``form_action``
    ``'none'``: a page whose form must never be sent by the browser itself (it holds a key)."""
    response = Response(OWN.joinpath(name).read_text(encoding="utf-8"), mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        f"default-src 'self'; img-src 'self' data:; style-src {style_src}; script-src 'self'; "
        f"connect-src 'self'; frame-ancestors 'none'; form-action {form_action}; base-uri 'none'"
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def own_asset(name: str, types: Mapping[str, str]) -> Response:
    """A file a page of the package loads, if ``types`` (name -> its type) lists it."""
    if name not in types:
        raise NotFound("no such asset")
    return Response(OWN.joinpath(name).read_bytes(), mimetype=types[name])


@bp.get("")
def index() -> Response:
    # Swagger UI styles some elements inline.
    return html_page("docs.html", style_src="'self' 'unsafe-inline'")


@bp.get("/assets/<name>")
def asset(name: str) -> Response:
    if name in SWAGGER_ASSETS:
        data = (swagger_ui_path / name).read_bytes()
        mimetype = SWAGGER_ASSETS[name]
    elif name in OWN_ASSETS:
        data = OWN.joinpath(name).read_bytes()
        mimetype = OWN_ASSETS[name]
    else:
        raise NotFound("no such asset")
    response = Response(data, mimetype=mimetype)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response
