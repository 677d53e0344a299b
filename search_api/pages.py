"""The `pages` resource: the web page for people (plain HTML, CSS and JS; no build step)."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app, render_template

from search_api import auth
from search_api.items import THUMBNAIL_MAX_SIZE

bp = APIBlueprint("pages", __name__, enable_openapi=False)

PAGE_DEFAULT_K = 12  # results the page asks for unless the URL says otherwise (a 4- or 6-column grid)


@bp.get("/")
@auth.public  # the page holds no data; its API calls carry the key
def index() -> str:
    """Search by image: choose or drop a picture, see look-alikes, click for more like one."""
    cfg = current_app.config
    return render_template(
        "index.html",
        default_k=min(PAGE_DEFAULT_K, int(cfg["MAX_K"])),
        max_k=int(cfg["MAX_K"]),
        thumbnail_size=int(cfg["THUMBNAIL_SIZE"]),
        thumbnail_max_size=THUMBNAIL_MAX_SIZE,
        read_key_required=bool(cfg["REQUIRE_READ_KEY"]),
    )
