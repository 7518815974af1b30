"""The client address behind trusted proxies, as WSGI middleware.

``X-Forwarded-For`` is believed only when the connection comes from a configured proxy network
(``OTPSVC_TRUSTED_PROXY_NETWORKS``), and then only as far back as the hops stay inside those
networks (at most ``OTPSVC_TRUSTED_PROXIES`` of them): anyone who reaches the port directly, or
who prepends their own entries to the header, cannot choose the address a limit counts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

#: The WSGI environ key that says whether the connection came from a trusted proxy: only then
#: does a header the proxy sets (``X-Forwarded-For``, a gateway's end-user id) name anyone.
VIA_TRUSTED_PROXY = "otpsvc.via_trusted_proxy"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


class TrustedProxies:
    def __init__(self, app: Any, hops: int, networks: Iterable[Network]) -> None:
        self.app = app
        self.hops = hops
        self.networks = tuple(networks)

    def trusted(self, text: str) -> bool:
        address = _address(text)
        return address is not None and any(address in network for network in self.networks)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = str(environ.get("REMOTE_ADDR") or "")
        environ[VIA_TRUSTED_PROXY] = self.trusted(peer)
        if environ[VIA_TRUSTED_PROXY]:
            header = str(environ.get("HTTP_X_FORWARDED_FOR", ""))
            chain = [part.strip() for part in header.split(",") if part.strip()]
            client = peer
            for _ in range(self.hops):
                if not chain or not self.trusted(client) or _address(chain[-1]) is None:
                    break
                client = chain.pop()
            environ["REMOTE_ADDR"] = client
            proto = str(environ.get("HTTP_X_FORWARDED_PROTO", "")).split(",")[-1].strip()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)
