"""The browser front. For now a landing page that says what is running and how to use it."""

from __future__ import annotations

from flask import Flask, current_app, render_template

from app.context import services


def index():
    pool = services().pool
    routes = current_app.config["SETTINGS"]["routes"]
    return render_template("index.html", accounts=pool.enabled(), demo_only=pool.demo_only(), routes=routes)


def register(app: Flask) -> None:
    app.add_url_rule("/", endpoint="web.index", view_func=index, methods=["GET"])
