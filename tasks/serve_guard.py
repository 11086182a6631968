"""Serve the registered guard model ("detox + classifier" pyfunc) under the served guard's contract and limits.

    python -m tasks.serve_guard --model models:/detoxops-guard@champion [--params params.yaml] [--set serve.port=5001]

The model is the same one ``mlflow models serve`` would serve (logged as code, safetensors weights; see
``tasks/pyfunc_model.py``); this server puts the contract of :mod:`detoxops.serving` in front of it: a body over
``serve.max_body_bytes`` is refused from its Content-Length before it is read, batches / image sizes / the request
time are bounded (``params.yaml`` ``serve``), float pixels need a declared range, and error bodies never echo the
request. It binds ``serve.host`` (default 127.0.0.1: put a reverse proxy with TLS and authentication in front of it
for anything but loopback). Clients: ``Detoxifier("http://127.0.0.1:5001")`` or
:func:`detoxops.serving.classify_over_http`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from tasks import PROJECT_ROOT, configure_environment

configure_environment()


def load_guard(model_uri: str):
    """(predict, image_size) of a logged guard model: its :class:`Detoxifier`'s predict on uint8 batches."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    guard_model = model.unwrap_python_model()
    if not hasattr(guard_model, "guard"):
        raise ValueError(f"{model_uri} is not a detoxops guard model (logged by tasks.pyfunc_model.log_guard_model)")
    return guard_model.guard.predict, guard_model.image_size


def main(argv: list[str] | None = None) -> int:
    from detoxops.config import ConfigError, load_params
    from detoxops.serving import make_server

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/…")
    ap.add_argument("--params", default=str(PROJECT_ROOT / "params.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override, e.g. serve.port=5002")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_params(args.params, args.overrides).serve
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    predict, image_size = load_guard(args.model)
    server = make_server(predict, cfg, image_size=image_size)
    print(f"guard {args.model} on {server.url}/invocations (contract v1, input (N, {image_size}, {image_size}, 3)); "
          f"limits: body {cfg.max_body_bytes:,} B, batch {cfg.max_batch}, side {cfg.max_image_side}, "
          f"timeout {cfg.request_timeout_s:g} s, concurrency {cfg.concurrency}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
