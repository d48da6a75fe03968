"""A lean HTTP/1.1 keep-alive client for the load of the throughput benchmarks.

The phones of a benchmark share the machine's two CPUs with the server, so what the load generator
spends is taken from the server: httpx spent ~1.3 ms of CPU per request of a submission (its
request and response models, header normalisation, the event hooks), about a third of what the
server itself spent. The standard library's http.client does the same exchange on the same kept-alive
connection for a fraction of that, so the figures say more about the server. It is not a phone: no
retries, no redirects, no cookies, which none of the benchmarks needs.
"""

from __future__ import annotations

import http.client
import json as jsonlib
from urllib.parse import urlsplit


class Phone:
    def __init__(self, base: str, headers: dict[str, str], timeout: float = 120):
        u = urlsplit(base)
        self._conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        self._headers = dict(headers)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str | None = None) -> tuple[int, bytes]:
        headers = self._headers if content_type is None else {**self._headers, "Content-Type": content_type}
        self._conn.request(method, path, body=body, headers=headers)
        r = self._conn.getresponse()
        return r.status, r.read()  # read whole, so the connection is reused

    def post_json(self, path: str, payload: object) -> tuple[int, object]:
        status, raw = self.request("POST", path, jsonlib.dumps(payload).encode(), "application/json")
        return status, jsonlib.loads(raw) if raw else None

    def close(self) -> None:
        self._conn.close()
