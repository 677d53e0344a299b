"""The `pages` resource: the web page for people (plain HTML, CSS and JS; no build step)."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import current_app, render_template

from search_api import auth

bp = APIBlueprint("pages", __name__, enable_openapi=False)


@bp.get("/")
@auth.public  # the page holds no data; its API calls carry the key
def index() -> str:
    """Search by image: choose or drop a picture, see look-alikes, click for more like one."""
    return render_template("index.html", read_key_required=bool(current_app.config["REQUIRE_READ_KEY"]))
