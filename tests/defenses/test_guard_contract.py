"""The served guard's contract (detoxops.serving, issue #23): encodings, dtypes, pixel ranges, shapes, limits,
error bodies without the request's data — against the project's server on 127.0.0.1 around a known black box."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from detoxops.config import ServeConfig
from detoxops.serving import (
    GuardHTTPError,
    classify_over_http,
    decode_request,
    encode_request,
    make_server,
    to_uint8_images,
)


def brightness(images_u8: np.ndarray) -> np.ndarray:
    assert images_u8.dtype == np.uint8  # the model only ever sees uint8
    return (images_u8.reshape(len(images_u8), -1).mean(axis=1) // 64).astype(np.int64)


def _images(n=4, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


@pytest.fixture()
def serve():
    servers = []

    def start(predict=brightness, image_size=8, **cfg):
        server = make_server(predict, ServeConfig(**cfg), image_size=image_size, host="127.0.0.1", port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/invocations", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _send(url: str, images: np.ndarray, wire: str, pixel_range: str | None = None) -> tuple[int, dict]:
    """A request built by hand (the client itself refuses to send undeclared floats)."""
    if wire == "npy":
        buf = io.BytesIO()
        np.save(buf, images, allow_pickle=False)
        headers = {"Content-Type": "application/x-npy"}
        if pixel_range is not None:
            headers["X-Pixel-Range"] = pixel_range
        return _post(url, buf.getvalue(), headers)
    payload = {"inputs": images.tolist()}
    if pixel_range is not None:
        payload["params"] = {"pixel_range": pixel_range}
    return _post(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})


def test_uint8_over_both_wires_and_float_with_declared_range(serve):
    server = serve()
    images = _images(6)
    want = brightness(images)
    np.testing.assert_array_equal(classify_over_http(server.url, images), want)
    np.testing.assert_array_equal(classify_over_http(server.url, images, wire="json"), want)
    for lo, hi in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):
        floats = lo + images.astype(np.float32) / 255.0 * (hi - lo)
        for wire in ("npy", "json"):
            got = classify_over_http(server.url, floats, pixel_range=(lo, hi), wire=wire)
            np.testing.assert_array_equal(got, want)
    # the mapping itself: exact round trip of every uint8 value through [0, 1]
    levels = np.arange(256, dtype=np.float64).reshape(1, 16, 16, 1).repeat(3, axis=-1) / 255.0
    np.testing.assert_array_equal(to_uint8_images(levels, (0.0, 1.0)).ravel()[::3], np.arange(256))


@pytest.mark.parametrize(
    ("images", "pixel_range", "status", "code"),
    [
        (_images().astype(np.float32) / 255.0, None, 400, "undeclared_float_range"),  # the probe's black image
        (_images().astype(np.float32), "0,1", 400, "out_of_range"),
        (np.full((2, 8, 8, 3), np.nan, dtype=np.float32), "0,1", 400, "not_finite"),
        (_images().astype(np.int16) + 300, None, 400, "out_of_range"),
        (_images().astype(np.complex64), None, 400, "bad_dtype"),
        (_images().transpose(0, 3, 1, 2).copy(), None, 400, "bad_shape"),
        (_images()[..., :1].copy(), None, 400, "bad_shape"),
        (_images(size=16), None, 400, "wrong_image_size"),
        (_images(n=9), None, 413, "batch_too_large"),
        (_images(), "0,abc", 400, "bad_pixel_range"),
    ],
)
def test_contract_violations_are_named_errors(serve, images, pixel_range, status, code):
    server = serve(max_batch=8)
    for wire in ("npy", "json") if images.dtype != np.complex64 else ("npy",):
        got, body = _send(server.url, images, wire, pixel_range)
        assert (got, body["error"]["code"]) == (status, code), (wire, body)
        assert body["error"]["status"] == status and body["error"]["message"]
    with pytest.raises(GuardHTTPError) as info:  # and the client reports them with status and code
        classify_over_http(server.url, _images(size=16))
    assert (info.value.status, info.value.code) == (400, "wrong_image_size")


def test_image_side_limit_and_json_shapes(serve):
    server = serve(image_size=None, max_image_side=16)
    assert len(classify_over_http(server.url, _images(size=16))) == 4  # no model size: any size up to the limit
    with pytest.raises(GuardHTTPError, match="over serve.max_image_side = 16") as info:
        classify_over_http(server.url, _images(size=17))
    assert info.value.status == 413
    for payload, code in (
        ({"inputs": [[[[1, 2, 3]]], [[[1, 2]]]]}, "bad_shape"),  # ragged
        ({"inputs": [[[["a", "b", "c"]]]]}, "bad_dtype"),
        ({"inputs": [[[[True, False, True]]]]}, "bad_dtype"),
        ({"images": [[[[1, 2, 3]]]]}, "bad_json"),
        ({"inputs": [[[[1, 2, 3]]]], "params": {"scale": 2}}, "bad_params"),
        ({"inputs": [[[[0.5, 0.5, 0.5]]]], "params": {"pixel_range": "1,0"}}, "bad_pixel_range"),
    ):
        status, body = _post(server.url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        assert status == 400 and body["error"]["code"] == code, (payload, body)


def test_npy_bodies_are_never_unpickled(serve):
    server = serve()
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    status, body = _post(server.url, buf.getvalue(), {"Content-Type": "application/x-npy"})
    assert status == 400 and body["error"]["code"] == "bad_dtype" and "pickle" in body["error"]["message"]
    good, headers = encode_request(_images())
    status, body = _post(server.url, good[:-10], headers)  # data shorter than its header says
    assert status == 400 and body["error"]["code"] == "bad_npy"
    status, body = _post(server.url, b"not an npy", headers)
    assert status == 400 and body["error"]["code"] == "bad_npy"


def test_error_bodies_do_not_echo_the_request(serve):
    server = serve()
    marker = 0.123456789
    floats = np.full((2, 8, 8, 3), marker, dtype=np.float64)
    floats[0, 0, 0, 0] = 987654.0
    for wire in ("npy", "json"):
        for rng in (None, "0,1"):  # undeclared floats; values outside the declared range
            status, reply = _send(server.url, floats, wire, rng)
            text = json.dumps(reply)
            assert status == 400
            assert "123456" not in text and "987654" not in text, text
    status, reply = _post(server.url, json.dumps({"inputs": "<script>secret-token</script>"}).encode(),
                          {"Content-Type": "application/json"})
    assert status == 400 and "secret-token" not in json.dumps(reply)


def _read_reply(sock: socket.socket) -> bytes:
    """The whole reply: the server writes headers and body separately and closes the connection, so one
    ``recv`` may return the headers alone."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_oversized_body_refused_from_its_header_in_under_a_second(serve):
    server = serve(max_body_bytes=1 << 20)
    declared = 59 * 2**20  # the probe's 59 MiB request
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        started = time.perf_counter()
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
                     + f"Content-Length: {declared}\r\n\r\n".encode() + bytes(1 << 16))
        reply = _read_reply(sock)
        elapsed = time.perf_counter() - started
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"body_too_large" in reply and b"serve.max_body_bytes = 1,048,576" in reply
    assert elapsed < 1.0, elapsed
    # and through the client: a batch whose body is too large gets the same clear 413
    with pytest.raises(GuardHTTPError, match="HTTP 413|unreachable"):
        classify_over_http(server.url, np.zeros((100, 64, 64, 3), dtype=np.uint8))


def test_headers_without_length_wrong_type_and_slow_uploads(serve):
    server = serve(request_timeout_s=0.5)
    host, port = server.server_address[:2]
    status, body = _post(server.url, b"a,b\n1,2", {"Content-Type": "text/csv"})
    assert status == 415 and "application/x-npy" in body["error"]["message"]

    def raw(request: bytes) -> bytes:
        with socket.create_connection((host, port), timeout=5) as sock:
            sock.sendall(request)
            return _read_reply(sock)

    assert raw(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n").startswith(b"HTTP/1.1 411")
    started = time.perf_counter()
    slow = raw(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 1000\r\n\r\n{\"inputs\"")  # and then nothing: a slow-loris upload
    assert slow.startswith(b"HTTP/1.1 408") and time.perf_counter() - started < 3
    started = time.perf_counter()  # a connection that never sends its headers is closed after the timeout
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\n")
        assert sock.recv(65536) == b"" and time.perf_counter() - started < 3


def test_busy_model_answers_503_within_the_timeout(serve):
    release = threading.Event()

    def slow_model(images):
        release.wait(5)
        return brightness(images)

    server = serve(predict=slow_model, request_timeout_s=0.5, concurrency=1)
    first = threading.Thread(target=lambda: classify_over_http(server.url, _images()))
    first.start()
    time.sleep(0.2)
    started = time.perf_counter()
    with pytest.raises(GuardHTTPError) as info:
        classify_over_http(server.url, _images())
    assert info.value.status == 503 and time.perf_counter() - started < 2
    release.set()
    first.join(5)


def test_model_failure_is_a_500_without_internals(serve):
    def broken(images):
        raise RuntimeError("secret internal path /srv/models/abc")

    server = serve(predict=broken)
    with pytest.raises(GuardHTTPError) as info:
        classify_over_http(server.url, _images())
    assert info.value.status == 500 and "secret" not in str(info.value)


def test_contract_endpoint_and_decode_request_directly(serve):
    server = serve(max_batch=7)
    with urllib.request.urlopen(server.url + "/contract", timeout=5) as r:
        contract = json.loads(r.read())
    assert contract["max_batch"] == 7 and contract["input_shape"] == [None, 8, 8, 3]
    body, headers = encode_request(_images(3), "npy")
    np.testing.assert_array_equal(decode_request(body, headers["Content-Type"], image_size=8), _images(3))
    with pytest.raises(ValueError, match="pixel_range"):
        encode_request(_images().astype(np.float32))  # the client refuses to send undeclared floats too
