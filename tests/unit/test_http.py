"""Requests to loopback servers bypass proxies; an unreachable --server-url stops the session with one line."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from servingbench.measure.http import is_loopback, open_url

REPO = Path(__file__).resolve().parents[2]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_loopback_requests_bypass_a_proxy_that_plain_urllib_would_use(local_server: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a proxy that refuses every connection
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(urllib.error.URLError):  # what health checks did before: through the dead proxy
        urllib.request.build_opener().open(local_server + "/health", timeout=5)
    with open_url(local_server + "/health", timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b"ok"


@pytest.mark.parametrize("url, loopback", [("http://127.0.0.1:8000", True), ("http://localhost:1", True),
                                           ("http://[::1]:80/x", True), ("http://10.0.0.1:8000", False),
                                           ("http://my-lb:8000", False)])
def test_loopback_detection(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_an_unreachable_server_url_stops_the_session_with_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "perf/test_lab_load.py", "-p", "no:cacheprovider",
                           "--server-url", "http://127.0.0.1:9"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 4, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if "--server-url http://127.0.0.1:9" in line]
    assert lines and "not reachable" in lines[0] and "Connection refused" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
