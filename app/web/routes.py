"""The browser front. For now a landing page that says what is running and how to use it."""

from __future__ import annotations

from flask import Flask, current_app, render_template


def index():
    services = current_app.extensions["services"]
    accounts = [a for a in services.pool.accounts.values() if a.enabled]
    demo_only = bool(accounts) and all(a.type == "demo" for a in accounts)
    routes = current_app.config["SETTINGS"]["routes"]
    return render_template("index.html", accounts=accounts, demo_only=demo_only, routes=routes)


def register(app: Flask) -> None:
    app.add_url_rule("/", endpoint="web.index", view_func=index, methods=["GET"])
