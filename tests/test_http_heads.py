"""app/upstream/http.py reads response heads without the email package's parser: the same message, field
for field, as http.client's own parse_headers would give, for plain heads and odd ones alike."""

from __future__ import annotations

import io

import pytest

from app.upstream import http as upstream_http

HEADS = [
    b"Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nX-A:   spaced  \r\n\r\n",
    b"A: one\r\n  folded\r\n\tagain\r\nB:\r\nC:x\r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nset-cookie: c=3\r\n\r\n",
    b"Bad line without colon\r\nA: b\r\n\r\n",
    b"A: b\n\n",
    b" leading: space\r\nA: b\r\n\r\n",
    b"From nobody\r\nA: b\r\n\r\n",
    b"X-Latin: \xe9\xff\r\n\r\n",
    b"",
    b"A: b\r\nC: d",
    b"Retry-After: 30\r\nx-ratelimit-remaining-requests: 0\r\nContent-Length: 12\r\n\r\nbody follows",
]


@pytest.mark.parametrize("head", HEADS)
def test_a_head_reads_as_the_email_parser_reads_it(head):
    fast = upstream_http.parse_headers(io.BytesIO(head))
    slow = upstream_http._email_parse_headers(io.BytesIO(head))
    assert fast.items() == slow.items()
    for name in ("set-cookie", "a", "content-length", "retry-after"):
        assert fast.get_all(name) == slow.get_all(name)
        assert fast.get(name) == slow.get(name)


def test_the_rest_of_the_stream_is_left_unread():
    stream = io.BytesIO(b"A: b\r\n\r\nthe body")
    upstream_http.parse_headers(stream)
    assert stream.read() == b"the body"


def test_http_client_reads_heads_with_it():
    import http.client

    assert http.client.parse_headers is upstream_http.parse_headers
