"""Enforce the body size limit on chunked uploads too (they carry no Content-Length to check)."""

from __future__ import annotations

import io

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge


def install(app: Flask) -> None:
    """Read a chunked body up front, refusing it with 413 once it passes max_body_bytes."""

    @app.before_request
    def _limit_chunked_body():
        if request.content_length is not None:
            return  # Werkzeug refuses an oversized declared length itself
        if "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
            return
        limit = app.config["MAX_CONTENT_LENGTH"]
        stream, body = request.environ["wsgi.input"], bytearray()
        while len(body) <= limit:
            piece = stream.read(min(65536, limit + 1 - len(body)))
            if not piece:
                break
            body += piece
        if len(body) > limit:
            raise RequestEntityTooLarge()  # shaped like every 413, in errors.py
        # From here on the body is an ordinary one of known length.
        request.environ["wsgi.input"] = io.BytesIO(bytes(body))
        request.environ["CONTENT_LENGTH"] = str(len(body))
        request.environ.pop("HTTP_TRANSFER_ENCODING", None)
        request.environ.pop("wsgi.input_terminated", None)
        request.__dict__.pop("content_length", None)  # drop Werkzeug's cached None
