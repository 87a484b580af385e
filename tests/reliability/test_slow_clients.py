"""Slow-header clients (slowloris): a connection must deliver a complete request head within
TC_HEADER_TIMEOUT of opening (and of its previous response), or it is answered 408 and closed.
Bodies are not timed. Raw sockets against a real server (server/http_protocol.py)."""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import pytest

TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def slow_server(make_server):
    proc = make_server("server-slow-clients", TC_HEADER_TIMEOUT=str(TIMEOUT_S)).start()
    yield proc
    proc.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took."""
    started, data = time.monotonic(), b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - started


def test_a_client_that_never_finishes_its_headers_gets_408_and_is_closed(slow_server):
    with connect(slow_server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line: head incomplete
        data, took = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:200]
    assert json.loads(body)["error"]["type"] == "request_timeout"
    assert took < TIMEOUT_S + 10


def test_trickling_header_bytes_does_not_extend_the_deadline(slow_server):
    with connect(slow_server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        for i in range(40):  # one header line every 0.1 s: 4 s if the server let it
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed)
            try:
                sock.sendall(f"x-slow-{i}: a\r\n".encode())
            except OSError:
                break  # closed under us
            time.sleep(0.1)
        try:
            data, _ = read_until_closed(sock)
        except ConnectionResetError:
            data = b"reset"  # a line we sent crossed the close: cut off all the same
    assert data.startswith((b"HTTP/1.1 408", b"reset")), data[:200]
    assert time.monotonic() - started < 4.0


def test_a_silent_connection_is_closed_without_an_answer(slow_server):
    with connect(slow_server) as sock:
        data, took = read_until_closed(sock)
    assert data == b"" and took < TIMEOUT_S + 10


def test_keep_alive_and_slow_bodies_are_not_cut(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=30) as client:
        for _ in range(3):  # one connection, each next head within the deadline
            assert client.get("/healthz").status_code == 200
            time.sleep(TIMEOUT_S / 2)
        assert client.get("/healthz").status_code == 200

        def slow_body():  # the head goes out at once; the body takes 2.5 deadlines
            body = json.dumps({"sequences": [{"context_ids": [1, 2], "target_ids": [3]}]})
            for part in (body[:10], body[10:]):
                yield part.encode()
                time.sleep(TIMEOUT_S * 1.25)

        res = client.post(
            "/v1/logprobs", content=slow_body(), headers={"Content-Type": "application/json"}
        )
        assert res.status_code == 200, res.text[:300]


def test_the_server_serves_while_slow_clients_hold_connections(slow_server):
    socks = [connect(slow_server) for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/logprobs HTTP/1.1\r\n")
        assert httpx.get(slow_server.url + "/healthz", timeout=10).status_code == 200
        time.sleep(TIMEOUT_S + 1.0)
        closed = 0
        for sock in socks:
            sock.settimeout(10)
            data, _ = read_until_closed(sock)
            closed += data.startswith(b"HTTP/1.1 408")
        assert closed == len(socks)
    finally:
        for sock in socks:
            sock.close()
