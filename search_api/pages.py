"""The `pages` resource: the web page for people (plain HTML, CSS and JS; no build step)."""

from __future__ import annotations

from apiflask import APIBlueprint
from flask import render_template

bp = APIBlueprint("pages", __name__, enable_openapi=False)


@bp.get("/")
def index() -> str:
    """Search by image: choose or drop a picture, see look-alikes, click for more like one."""
    return render_template("index.html")
