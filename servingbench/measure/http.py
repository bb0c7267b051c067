"""Plain HTTP requests to the servers this suite measures: health, /metrics, /v1/models, scoring.

urllib honours ``http_proxy``; behind a corporate proxy a request to 127.0.0.1 would go to the proxy unless
``no_proxy`` says otherwise, and the servers would never become healthy. Loopback addresses therefore bypass
every proxy here (the load client, aiohttp, already does); other hosts keep the environment's proxy settings.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
import urllib.request
from typing import Any

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_url(url: str, *, timeout: float, api_key: str | None = None, data: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
    """``urlopen`` of ``url`` (a context manager), straight to a loopback server, through the proxy elsewhere."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    opener = _DIRECT if is_loopback(url) else urllib.request.build_opener()
    return opener.open(req, timeout=timeout)
