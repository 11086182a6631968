"""Start the dashboard on localhost, click through every page in headless Chromium, save a screenshot of each.

    python -m dashboards.screenshots --out docs/screenshots            # the store params.yaml points at
    MLFLOW_TRACKING_URI=sqlite:////abs/mlflow.db python -m dashboards.screenshots --out /tmp/shots
    DETOXOPS_PARAMS=/other/project/params.yaml python -m dashboards.screenshots   # that project's store and data

Uses Playwright with Debian's Chromium (``/usr/bin/chromium``, or ``DETOXOPS_CHROMIUM``); it never downloads a
browser. The end-to-end test (tests/dashboards/test_e2e_browser.py) drives the app through the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "dashboards" / "app.py"
CHROMIUM = os.environ.get("DETOXOPS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# page title in the navigation → screenshot file name
PAGES = {
    "Overview": "overview.png",
    "Defense results": "defense_results.png",
    "Sample explorer": "sample_explorer.png",
    "Visibility vs robustness": "visibility.png",
    "Try it": "try_it.png",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(env: dict[str, str] | None = None, port: int | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run ``streamlit run dashboards/app.py`` on 127.0.0.1; yields its base URL; stops it on exit."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    log = open(os.environ.get("DETOXOPS_STREAMLIT_LOG", os.devnull), "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {proc.returncode} before answering on {url}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _settle(page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit finished the script run: no spinner, and the page's text unchanged for ~1 s."""
    page.wait_for_load_state("networkidle")
    deadline = time.monotonic() + timeout_ms / 1000
    previous = None
    while time.monotonic() < deadline:
        busy = page.locator('[data-testid="stSpinner"], [data-testid="stStatusWidget"]').count() > 0
        text = page.get_by_test_id("stMain").inner_text() if page.get_by_test_id("stMain").count() else ""
        if not busy and text == previous:
            break
        previous = text
        page.wait_for_timeout(1000)
    page.wait_for_timeout(500)  # charts render after the script has finished


def _full_screenshot(page, path: Path, width: int) -> None:
    """Streamlit scrolls inside its main container, so grow the viewport to the content before the shot."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], [data-testid=\"stMainBlockContainer\"]')]"
        ".map(e => e.scrollHeight), document.body.scrollHeight)"
    )
    page.set_viewport_size({"width": width, "height": min(int(height) + 40, 8000)})
    page.wait_for_timeout(800)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": width, "height": 1000})


def sample_png(size: int = 16) -> bytes:
    """A small test image for the upload: a digit-like stroke with a white BadNets-style corner patch."""
    import numpy as np
    from PIL import Image

    img = np.zeros((size, size, 3), np.uint8)
    img[3:-3, size // 2 - 1 : size // 2 + 1] = 200
    img[-4:-1, -4:-1] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def capture(url: str, out_dir: Path, upload: bytes | None = None, width: int = 1400) -> dict[str, dict]:
    """Visit every page, upload ``upload`` in 'Try it' and run it; screenshot each page into ``out_dir``.

    Returns per page: the screenshot path, the page's text and whether Streamlit showed an exception.
    """
    from playwright.sync_api import expect, sync_playwright

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seen: dict[str, dict] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(url)
            expect(page.get_by_role("heading", name="Overview")).to_be_visible(timeout=60_000)
            for title, name in PAGES.items():
                page.get_by_test_id("stSidebarNav").get_by_role("link", name=title).click()
                expect(page.get_by_role("heading", name=title).first).to_be_visible(timeout=60_000)
                _settle(page)
                if title == "Try it" and upload is not None and page.get_by_text("Upload", exact=True).count():
                    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(
                        {"name": "upload.png", "mimeType": "image/png", "buffer": upload})
                    _settle(page)
                    fast = page.get_by_test_id("stCheckbox").filter(has_text="Fast preview")
                    if fast.count() and not fast.locator("input").is_checked():
                        fast.locator("label").first.click()  # DDIM: seconds instead of minutes on a CPU
                        _settle(page)
                        if not fast.locator("input").is_checked():
                            raise RuntimeError("could not switch on 'Fast preview' in Try it")
                    page.get_by_role("button", name="Detoxify").click()
                    page.get_by_text(re.compile(r"^(Detoxified in|Could not detoxify)")).first.wait_for(timeout=300_000)
                    _settle(page)
                shot = out_dir / name
                _full_screenshot(page, shot, width)
                seen[title] = {
                    "path": shot,
                    "text": page.get_by_test_id("stMain").inner_text(),
                    "exception": page.get_by_test_id("stException").count() > 0,
                }
        finally:
            browser.close()
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--upload", type=Path, help="image to upload in 'Try it' (default: a generated 16x16 one)")
    args = parser.parse_args(argv)
    upload = args.upload.read_bytes() if args.upload else sample_png()
    with serve() as url:
        seen = capture(url, args.out, upload)
    for title, info in seen.items():
        print(f"{title:28s} {info['path']}{'  (exception shown!)' if info['exception'] else ''}")
    return 1 if any(info["exception"] for info in seen.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
