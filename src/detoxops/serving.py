"""The served guard's wire contract (v1): one module for the server, the client and the array rules both share.

**Request** ``POST /invocations`` (``/predict`` is an alias), with a ``Content-Length`` (411 without one):

* ``Content-Type: application/x-npy`` -- the body is one ``.npy`` array (``numpy.save``, never pickled: object
  dtypes are refused);
* ``Content-Type: application/json`` -- ``{"inputs": <nested list (N, H, W, 3)>}``, optionally with
  ``"params": {"pixel_range": "0,1"}`` (MLflow's scoring format, so the same JSON works against
  ``mlflow models serve``).

**Pixels.** uint8 (or JSON integers) in 0..255 are taken as they are. Floats are accepted only with a declared
range, ``pixel_range`` ``"lo,hi"`` (the ``X-Pixel-Range`` header for ``.npy`` bodies, ``params.pixel_range`` in
JSON; e.g. ``0,1`` for normalised images): every value must be finite and inside it, and is mapped linearly to
0..255 and rounded. Anything else -- floats without a range, values outside the range, NaN, other dtypes -- is a
400 that names the problem. Nothing is ever cast silently (the probe in issue #23 found [0, 1] floats cast to
uint8, a black image, classified with HTTP 200).

**Shape.** ``(N, H, W, 3)``, channels last, RGB; ``1 <= N <= max_batch`` (413 above); ``H, W <=
max_image_side`` (413); ``H = W =`` the model's input size when the model has one (400, the expected shape is
named; no resizing).

**Limits** (``params.yaml`` ``serve``, :class:`detoxops.config.ServeConfig`): a body over ``max_body_bytes`` is
refused with 413 from its ``Content-Length`` header before a byte of it is read; ``request_timeout_s`` bounds the
upload and the wait for the model (408 / 503); ``concurrency`` requests run the model at once.

**Reply** 200 ``{"predictions": [int, ...]}`` (one label per image). Errors: ``{"error": {"status", "code",
"message"}}`` -- the message names the problem (shape, dtype, range, limit and how to raise it) and never
contains the request's data; an internal failure is a 500 without details (logged on the server).
``GET /ping`` answers 200; ``GET /contract`` the limits and the expected shape as JSON.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

if TYPE_CHECKING:
    from detoxops.config import ServeConfig

__all__ = [
    "CONTRACT_VERSION",
    "NPY_CONTENT_TYPE",
    "ContractError",
    "GuardHTTPError",
    "GuardServer",
    "HttpClassifier",
    "classify_over_http",
    "decode_request",
    "encode_request",
    "make_server",
    "parse_pixel_range",
    "to_uint8_images",
]

CONTRACT_VERSION = 1
NPY_CONTENT_TYPE = "application/x-npy"
JSON_CONTENT_TYPE = "application/json"
_log = logging.getLogger("detoxops.serving")


class ContractError(ValueError):
    """A request that breaks the contract: ``status`` (400, 411, 413, 415, …), a short ``code`` and a message
    that names the problem without repeating the request's data."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = int(status), code, message


class GuardHTTPError(RuntimeError):
    """The guard endpoint answered with an error (``status``, ``code`` and its message) or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


# ------------------------------------------------------------------------------------------ arrays
def parse_pixel_range(value: Any) -> tuple[float, float] | None:
    """``"0,1"`` / ``[0, 1]`` / ``None`` or ``""`` (no declared range) → ``(lo, hi)`` / ``None``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        parts = [float(p) for p in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ContractError(400, "bad_pixel_range", "pixel_range must be two numbers 'lo,hi', e.g. '0,1'") from None
    if len(parts) != 2 or not all(np.isfinite(parts)) or not parts[0] < parts[1]:
        raise ContractError(400, "bad_pixel_range", "pixel_range must be two finite numbers lo < hi, e.g. '0,1'")
    return parts[0], parts[1]


def to_uint8_images(arr: np.ndarray, pixel_range: tuple[float, float] | None = None) -> np.ndarray:
    """The contract's pixel rules: uint8 / integers in 0..255 as they are; floats only with a declared range,
    mapped linearly to 0..255; everything else a :class:`ContractError` (never a silent cast)."""
    kind = arr.dtype.kind
    if kind not in "uif":
        raise ContractError(400, "bad_dtype", f"pixels must be uint8 or float, got dtype {arr.dtype}")
    if arr.size == 0:
        return arr.astype(np.uint8)
    if pixel_range is None:
        if kind == "f":
            raise ContractError(
                400, "undeclared_float_range",
                f"float pixels ({arr.dtype}) need a declared pixel_range, e.g. '0,1' for normalised images or "
                "'0,255' (X-Pixel-Range header / params.pixel_range); send uint8 otherwise",
            )
        if arr.dtype == np.uint8:
            return arr
        outside = int(np.count_nonzero((arr < 0) | (arr > 255)))
        if outside:
            raise ContractError(400, "out_of_range",
                                f"{outside} integer pixel value(s) outside 0..255 (uint8 expected)")
        return arr.astype(np.uint8)
    lo, hi = pixel_range
    values = arr.astype(np.float64, copy=False)
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise ContractError(400, "not_finite", f"{bad} pixel value(s) are NaN or infinite")
    outside = int(np.count_nonzero((values < lo) | (values > hi)))
    if outside:
        raise ContractError(400, "out_of_range",
                            f"{outside} pixel value(s) outside the declared pixel_range [{lo:g}, {hi:g}]")
    return np.rint((values - lo) * (255.0 / (hi - lo))).clip(0, 255).astype(np.uint8)


def check_shape(shape: tuple[int, ...], max_batch: int, max_image_side: int, image_size: int | None) -> None:
    """The contract's shape rules (see the module docstring); ``ContractError`` 400 / 413 otherwise."""
    if len(shape) != 4 or shape[-1] != 3:
        hint = " (looks like NCHW; send channels last)" if len(shape) == 4 and shape[1] == 3 else ""
        raise ContractError(400, "bad_shape", f"images must have shape (N, H, W, 3), got {tuple(shape)}{hint}")
    n, h, w = shape[:3]
    if n < 1:
        raise ContractError(400, "empty_batch", "the batch holds no image")
    if n > max_batch:
        raise ContractError(413, "batch_too_large",
                            f"{n} images in one request, over serve.max_batch = {max_batch} (split the batch, or "
                            "raise it on the server: --set serve.max_batch=...)")
    if h > max_image_side or w > max_image_side:
        raise ContractError(413, "image_too_large",
                            f"images of {h}x{w}, over serve.max_image_side = {max_image_side} "
                            "(raise it on the server: --set serve.max_image_side=...)")
    if image_size is not None and (h, w) != (image_size, image_size):
        raise ContractError(400, "wrong_image_size",
                            f"images of {h}x{w}; this model takes (N, {image_size}, {image_size}, 3) "
                            "(resize on the client side: the server never resizes)")


# ------------------------------------------------------------------------------------ request bodies
def decode_request(
    body: bytes,
    content_type: str,
    *,
    pixel_range_header: str | None = None,
    max_batch: int = 256,
    max_image_side: int = 512,
    image_size: int | None = None,
) -> np.ndarray:
    """A request body (``.npy`` or JSON) → validated uint8 (N, H, W, 3); :class:`ContractError` otherwise."""
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime == NPY_CONTENT_TYPE:
        stream = io.BytesIO(body)
        try:
            version = np.lib.format.read_magic(stream)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(stream)
        except (ValueError, OSError, EOFError) as exc:
            raise ContractError(400, "bad_npy", f"body is not a readable .npy array ({type(exc).__name__})") from None
        if dtype.hasobject:
            raise ContractError(400, "bad_dtype", "object arrays are refused (they would need pickle)")
        check_shape(tuple(shape), max_batch, max_image_side, image_size)  # from the header, before the data
        offset = stream.tell()
        expected = int(np.prod(shape)) * dtype.itemsize
        if len(body) - offset != expected:
            raise ContractError(400, "bad_npy", f".npy body holds {len(body) - offset} data bytes, its header "
                                f"declares {expected}")
        arr = np.frombuffer(body, dtype=dtype, count=int(np.prod(shape)), offset=offset)
        arr = arr.reshape(shape, order="F" if fortran else "C")
        return to_uint8_images(arr, parse_pixel_range(pixel_range_header))
    if mime == JSON_CONTENT_TYPE:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ContractError(400, "bad_json", "body is not valid UTF-8 JSON") from None
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise ContractError(400, "bad_json", 'JSON body must be an object {"inputs": [...], "params": {...}}')
        params = payload.get("params") or {}
        if not isinstance(params, dict):
            raise ContractError(400, "bad_json", '"params" must be an object')
        unknown = sorted(set(params) - {"pixel_range"})
        if unknown:
            raise ContractError(400, "bad_params", f"unknown params {unknown} (known: pixel_range)")
        pixel_range = parse_pixel_range(params.get("pixel_range", payload.get("pixel_range")))
        try:
            arr = np.asarray(payload["inputs"])
        except ValueError:
            raise ContractError(400, "bad_shape", '"inputs" is ragged: every image must have the same shape') from None
        if arr.dtype.kind not in "iuf":  # strings, booleans, nested objects, ragged lists
            raise ContractError(400, "bad_dtype", f'"inputs" must hold numbers only (found {arr.dtype.kind!r} data)')
        check_shape(arr.shape, max_batch, max_image_side, image_size)
        return to_uint8_images(arr, pixel_range)
    raise ContractError(415, "unsupported_media_type",
                        f"Content-Type must be {NPY_CONTENT_TYPE} or {JSON_CONTENT_TYPE}, got {mime or 'none'!r}")


def encode_request(
    images: np.ndarray, wire: str = "npy", pixel_range: tuple[float, float] | None = None
) -> tuple[bytes, dict[str, str]]:
    """(body, headers) of a contract request for ``images`` (uint8, or float with ``pixel_range``)."""
    images = np.asarray(images)
    if images.dtype.kind == "f" and pixel_range is None:
        raise ValueError("float images need pixel_range=(lo, hi), e.g. (0, 1); or send uint8")
    rng = None if pixel_range is None else f"{float(pixel_range[0])!r},{float(pixel_range[1])!r}"
    if wire == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(images), allow_pickle=False)
        headers = {"Content-Type": NPY_CONTENT_TYPE}
        if rng is not None:
            headers["X-Pixel-Range"] = rng
        return buf.getvalue(), headers
    if wire == "json":
        payload: dict[str, Any] = {"inputs": images.tolist()}
        if rng is not None:
            payload["params"] = {"pixel_range": rng}
        return json.dumps(payload, separators=(",", ":")).encode(), {"Content-Type": JSON_CONTENT_TYPE}
    raise ValueError(f"wire must be 'npy' or 'json', got {wire!r}")


# ------------------------------------------------------------------------------------------- client
def invocations_url(url: str) -> str:
    """``http://host:port`` → ``http://host:port/invocations``; a URL with a path is kept as it is."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"guard url must start with http:// or https://, got {url!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/invocations")
    return urlunsplit(parts)


def classify_over_http(
    url: str,
    images: np.ndarray,
    *,
    pixel_range: tuple[float, float] | None = None,
    wire: str = "npy",
    timeout: float = 60.0,
) -> np.ndarray:
    """POST ``images`` to a guard endpoint speaking this contract; int64 labels (N,).

    Works against ``python -m tasks.serve_guard`` (both wires) and ``mlflow models serve`` of the guard model
    (``wire="json"``). Errors raise :class:`GuardHTTPError` carrying the server's status, code and message."""
    body, headers = encode_request(images, wire, pixel_range)
    target = invocations_url(url)
    request = urllib.request.Request(target, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(target, exc) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise GuardHTTPError(f"guard endpoint {target} unreachable: {reason}") from None
    try:
        payload = json.loads(reply)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GuardHTTPError(f"guard endpoint {target}: reply is not JSON") from None
    if not isinstance(payload, dict) or "predictions" not in payload:
        raise GuardHTTPError(f"guard endpoint {target}: reply has no 'predictions' (not a detoxops guard?)")
    labels = np.asarray(payload["predictions"])
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
        raise GuardHTTPError(f"guard endpoint {target}: expected {len(images)} integer labels, got "
                             f"{labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _http_error(url: str, exc: urllib.error.HTTPError) -> GuardHTTPError:
    detail, code = exc.reason, None
    try:
        payload = json.loads(exc.read())
        err = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(err, dict):  # this contract
            detail, code = err.get("message", detail), err.get("code")
        elif isinstance(payload, dict) and "message" in payload:  # mlflow models serve
            detail, code = payload["message"], payload.get("error_code")
    except Exception:  # noqa: BLE001 - a non-JSON error body: keep the HTTP reason
        pass
    return GuardHTTPError(f"guard endpoint {url} answered HTTP {exc.code}: {detail}", status=exc.code, code=code)


# ------------------------------------------------------------------------------------------- server
class GuardServer(ThreadingHTTPServer):
    """A threaded HTTP server for ``predict(uint8 (N, H, W, 3)) -> labels`` under the contract and limits."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        predict: Callable[[np.ndarray], np.ndarray],
        cfg: ServeConfig,
        image_size: int | None = None,
    ) -> None:
        self.predict = predict
        self.cfg = cfg
        self.image_size = image_size
        self.slots = threading.BoundedSemaphore(cfg.concurrency)
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):  # a client that went away: not the server's fault
            _log.debug("client %s went away: %s", client_address, type(exc).__name__)
            return
        _log.exception("unexpected error serving %s", client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def contract(self) -> dict[str, Any]:
        c = self.cfg
        size = self.image_size
        return {
            "contract_version": CONTRACT_VERSION,
            "endpoint": "POST /invocations",
            "content_types": [NPY_CONTENT_TYPE, JSON_CONTENT_TYPE],
            "input_shape": [None, size, size, 3],
            "pixels": "uint8 0..255, or float with a declared pixel_range 'lo,hi' (X-Pixel-Range / params)",
            "max_body_bytes": c.max_body_bytes,
            "max_batch": c.max_batch,
            "max_image_side": c.max_image_side,
            "request_timeout_s": c.request_timeout_s,
        }


def make_server(
    predict: Callable[[np.ndarray], np.ndarray],
    cfg: ServeConfig | None = None,
    *,
    image_size: int | None = None,
    host: str | None = None,
    port: int | None = None,
) -> GuardServer:
    """A :class:`GuardServer` bound to ``host:port`` (default ``cfg.host`` / ``cfg.port``; port 0 = any free)."""
    from detoxops.config import ServeConfig

    cfg = cfg or ServeConfig()
    return GuardServer((host or cfg.host, cfg.port if port is None else port), predict, cfg, image_size)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for clients that send many requests
    server: GuardServer

    def setup(self) -> None:
        # every socket read (request line, headers, idle keep-alive) times out: a slow or idle client cannot
        # hold a thread forever
        self.timeout = self.server.cfg.request_timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        _log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, headers too long) would echo the request line as HTML.
        self._reply(code, {"error": {"status": code, "code": "bad_http", "message": "malformed HTTP request"}},
                    close=True)

    def _reply(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, err: ContractError, close: bool = False) -> None:
        self._reply(err.status, {"error": {"status": err.status, "code": err.code, "message": err.message}}, close)

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = urlsplit(self.path).path
        if path in ("/ping", "/health"):
            self._reply(200, {"status": "ok"})
        elif path == "/contract":
            self._reply(200, self.server.contract())
        else:
            self._error(ContractError(404, "not_found", "no such endpoint (POST /invocations, GET /contract)"))

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        cfg = self.server.cfg
        deadline = time.monotonic() + cfg.request_timeout_s
        if urlsplit(self.path).path not in ("/invocations", "/predict"):
            self._error(ContractError(404, "not_found", "POST images to /invocations"), close=True)
            return
        try:
            body = self._read_body(cfg, deadline)
            images = decode_request(
                body, self.headers.get("Content-Type", ""), pixel_range_header=self.headers.get("X-Pixel-Range"),
                max_batch=cfg.max_batch, max_image_side=cfg.max_image_side, image_size=self.server.image_size,
            )
            del body
            if not self.server.slots.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                raise ContractError(503, "busy", f"the model was busy for serve.request_timeout_s = "
                                    f"{cfg.request_timeout_s:g} s; retry later")
        except ContractError as err:
            self._error(err, close=err.status in (408, 411, 413, 415) or self.close_connection)
            return
        try:
            labels = np.asarray(self.server.predict(images))
            if labels.shape != (len(images),):
                raise RuntimeError(f"model returned shape {labels.shape} for {len(images)} images")
        except Exception:  # noqa: BLE001 - the client gets no internals; the server log gets the traceback
            _log.exception("guard model failed on a batch of shape %s", images.shape)
            self._error(ContractError(500, "internal_error", "the model failed on this batch (see the server log)"))
            return
        finally:
            self.server.slots.release()
        self._reply(200, {"predictions": [int(y) for y in labels]})

    def _read_body(self, cfg: ServeConfig, deadline: float) -> bytes:
        mime = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if mime not in (NPY_CONTENT_TYPE, JSON_CONTENT_TYPE):  # before reading: no body is read for nothing
            raise ContractError(415, "unsupported_media_type",
                                f"Content-Type must be {NPY_CONTENT_TYPE} or {JSON_CONTENT_TYPE}, got "
                                f"{mime or 'none'!r}")
        if self.headers.get("Transfer-Encoding"):
            raise ContractError(411, "length_required", "send a Content-Length (chunked bodies are not accepted)")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise ContractError(411, "length_required", "a Content-Length header is required")
        try:
            length = int(raw)
        except ValueError:
            raise ContractError(400, "bad_length", "Content-Length is not an integer") from None
        if length < 0:
            raise ContractError(400, "bad_length", "Content-Length is negative")
        if length > cfg.max_body_bytes:
            raise ContractError(413, "body_too_large",
                                f"body of {length:,} bytes, over serve.max_body_bytes = {cfg.max_body_bytes:,} "
                                "(send fewer images per request, or raise it on the server: "
                                "--set serve.max_body_bytes=...)")
        chunks, left = [], length
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ContractError(408, "timeout", "the body did not arrive within serve.request_timeout_s")
            self.connection.settimeout(remaining)
            try:
                chunk = self.rfile.read1(min(left, 1 << 20))
            except TimeoutError:
                raise ContractError(408, "timeout", "the body did not arrive within serve.request_timeout_s") from None
            finally:
                self.connection.settimeout(self.timeout)
            if not chunk:
                raise ContractError(400, "short_body", f"the body ended {left} bytes before its Content-Length")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class HttpClassifier:
    """A classifier behind a detoxops guard endpoint (the contract in :mod:`detoxops.serving`): POST a uint8
    (N, H, W, 3) batch, get N labels back. ``url`` is the server (``http://127.0.0.1:5001``, ``/invocations`` is
    appended) or the full endpoint. ``wire``: ``npy`` (compact; ``python -m tasks.serve_guard``) or ``json``
    (also understood by ``mlflow models serve`` of the guard model). ``max_batch`` splits larger batches into
    several requests (the server's ``serve.max_batch``)."""

    def __init__(self, url: str, wire: str = "npy", timeout: float = 60.0, max_batch: int | None = None) -> None:
        if wire not in ("npy", "json"):
            raise ValueError(f"HttpClassifier: wire must be 'npy' or 'json', got {wire!r}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"HttpClassifier: max_batch must be >= 1, got {max_batch}")
        self.url = invocations_url(url)
        self.wire, self.timeout, self.max_batch = wire, float(timeout), max_batch

    def __call__(self, images_u8: np.ndarray) -> np.ndarray:
        if not isinstance(images_u8, np.ndarray) or images_u8.dtype != np.uint8:
            raise ValueError("HttpClassifier sends uint8 images (use detoxops.serving.classify_over_http with "
                             "pixel_range= for floats)")
        step = self.max_batch or max(len(images_u8), 1)
        parts = [classify_over_http(self.url, images_u8[i : i + step], wire=self.wire, timeout=self.timeout)
                 for i in range(0, len(images_u8), step)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
