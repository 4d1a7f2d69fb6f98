"""Build unsigned-looking JWTs like ChatGPT's access tokens, for code that only reads their payload."""

from __future__ import annotations

import base64
import hashlib
import json

HEADER = {"alg": "RS256", "typ": "JWT"}


def b64url(data: bytes) -> str:
    """Encode bytes as unpadded base64url, as JWTs do."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(exp: float, **claims) -> str:
    """Return header.payload.signature with exp (as an int) and claims in the payload and a fake signature."""
    header = b64url(json.dumps(HEADER, separators=(",", ":")).encode())
    payload = b64url(json.dumps({"exp": int(exp), **claims}, separators=(",", ":")).encode())
    signature = b64url(hashlib.sha256(f"{header}.{payload}".encode()).digest() * 8)
    return f"{header}.{payload}.{signature}"


def jwt_payload(token: str) -> dict:
    """Decode the payload of a JWT without checking its signature."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
