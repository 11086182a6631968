"""Load test of the served guard (issue #23): requests/s and latency percentiles at 1, 4 and 8 concurrent clients.

Loopback only, bounded: every level stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes
first. By default the script starts the project's guard server (:mod:`detoxops.serving`, the contract and limits of
``params.serve``) in a child process around the digits guard -- ``--defense`` (default SampDetox with ``params.sampdetox`` and
``--server-set`` overrides; ``none`` measures the server and the classifier alone) with the shipped 16x16
purifier in front of a width-8 small CNN (untrained: throughput does not depend on the weights) -- and
drives it with clients that speak the contract (:func:`detoxops.serving.classify_over_http`, one connection per
request, as ``Detoxifier(url)`` does). ``--url http://127.0.0.1:PORT`` drives a guard that is already running
(``python -m tasks.serve_guard``) instead; only loopback addresses are accepted. It also times the refusal of an
oversized body (413 from the Content-Length header).

    nice -n 10 .venv/bin/python benchmarks/guard_load.py --out benchmarks/results/guard_load_cpu.json

Results: JSON with the command, machine (CPU, cores, threads, load average before / after), versions, and per
level the requests, errors, req/s, images/s and p50 / p90 / p99 / max latency in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve_child(port: int, threads: int, params_path: str, overrides: list[str], defense: str) -> None:
    """The child: the digits guard under the contract on 127.0.0.1:port (until killed)."""
    import torch

    from detoxops.config import load_params
    from detoxops.defenses.catalog import build_defense
    from detoxops.defenses.guard import Detoxifier
    from detoxops.diffusion.unet import default_purifier
    from detoxops.models import build_classifier
    from detoxops.serving import make_server

    torch.set_num_threads(threads)
    params = load_params(params_path, overrides)
    purifier = default_purifier(16)
    classifier = build_classifier("small_cnn", 10, 3, 16, seed=0, width=8).eval()
    guard = Detoxifier(classifier, build_defense(defense, purifier if defense != "none" else None, params.sampdetox),
                       batch_size=params.sampdetox.batch_size)
    server = make_server(guard.predict, params.serve, image_size=16, host="127.0.0.1", port=port)
    print(f"ready {server.url}", flush=True)
    server.serve_forever()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen | None, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"guard server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise RuntimeError(f"guard server at {url} not ready after {seconds} s")


def run_level(url: str, clients: int, images: np.ndarray, max_requests: int, max_seconds: float) -> dict:
    """``clients`` threads share a budget of ``max_requests`` requests and a ``max_seconds`` deadline."""
    from detoxops.serving import classify_over_http

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        while True:
            with lock:
                if issued[0] >= max_requests or time.monotonic() >= deadline:
                    return
                issued[0] += 1
            started = time.perf_counter()
            try:
                classify_over_http(url, images, timeout=120)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(type(exc).__name__)
                continue
            with lock:
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    done = len(latencies)
    return {
        "clients": clients, "requests": done, "errors": len(errors), "error_kinds": sorted(set(errors)),
        "seconds": round(wall, 2), "req_per_s": round(done / wall, 2),
        "images_per_s": round(done * len(images) / wall, 1),
        **({f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)} if done else {}),
        "max_ms": round(float(ms.max()), 1) if done else None,
    }


def oversized_refusal_ms(url: str, declared: int = 59 * 2**20, tries: int = 5) -> list[float]:
    """Time from sending the headers of a ``declared``-byte body (and its first 64 KiB) to the 413."""
    parts = urlsplit(url)
    out = []
    for _ in range(tries):
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            started = time.perf_counter()
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-npy\r\n"
                         + f"Content-Length: {declared}\r\n\r\n".encode() + bytes(1 << 16))
            reply = sock.recv(65536)
            out.append(round((time.perf_counter() - started) * 1000, 2))
        if not reply.startswith(b"HTTP/1.1 413"):
            raise RuntimeError(f"expected 413, got {reply[:80]!r}")
    return out


def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="a running guard on loopback (default: start one)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--requests", type=int, default=200, help="most requests per level")
    ap.add_argument("--seconds", type=float, default=60.0, help="most seconds per level")
    ap.add_argument("--batch", type=int, default=4, help="images per request")
    ap.add_argument("--size", type=int, default=16, help="image side (the served model's input size)")
    ap.add_argument("--server-threads", type=int, default=2, help="torch threads in the started server")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--defense", default="sampdetox", help="catalog defense of the started server (none = the "
                    "classifier alone: the server's own overhead)")
    ap.add_argument("--server-set", action="append", default=[],
                    help="override for the started server, e.g. serve.request_timeout_s=600 on a loaded machine")
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--serve-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_child is not None:
        serve_child(args.serve_child, args.server_threads, args.params, args.server_set, args.defense)
        return 0
    if max(args.clients) > 64 or args.requests > 100_000 or args.seconds > 3600:
        ap.error("bounded by design: at most 64 clients, 100000 requests and 3600 s per level")

    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve-child", str(port), "--server-threads",
                                 str(args.server_threads), "--params", args.params,
                                 "--defense", args.defense, *(f"--server-set={o}" for o in args.server_set)],
                                cwd=ROOT,
                                stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
    elif urlsplit(url).hostname not in LOOPBACK:
        ap.error(f"loopback only: {url} is not 127.0.0.1 / localhost / ::1")
    try:
        _wait_ready(url, proc)
        images = np.random.default_rng(0).integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8)
        run_level(url, 1, images, 3, 60)  # warm-up (first-call allocations), not reported
        load_before = os.getloadavg()
        levels = []
        for clients in args.clients:
            level = run_level(url, clients, images, args.requests, args.seconds)
            print(json.dumps(level), flush=True)
            levels.append(level)
        refusal = oversized_refusal_ms(url)
        load_after = os.getloadavg()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "server": f"started here: defense {args.defense} (params.sampdetox + server overrides, shipped digits-16 "
        "purifier) in front of a width-8 small CNN" if args.url is None else args.url,
        "request": {"images": args.batch, "shape": [args.batch, args.size, args.size, 3], "wire": "npy"},
        "server_torch_threads": args.server_threads if args.url is None else None,
        "server_overrides": args.server_set,
        "machine": machine(),
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "levels": levels,
        "oversized_body_413_ms": refusal,
    }
    print(json.dumps({"oversized_body_413_ms": refusal, "loadavg": result["loadavg_after"]}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
