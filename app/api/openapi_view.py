"""GET /api/openapi.json: the OpenAPI 3.1 description of the routes at their configured paths (no key)."""

from __future__ import annotations

from flask import current_app, jsonify

from app.openapi import build


def openapi():
    """Built once per app from its settings' routes, then served as is."""
    description = current_app.extensions.get("openapi_description")
    if description is None:
        description = build(current_app.config["SETTINGS"]["routes"])
        current_app.extensions["openapi_description"] = description
    response = jsonify(description)
    response.headers["Cache-Control"] = "no-cache"
    return response


VIEWS: dict = {"openapi": (openapi, ["GET"])}
