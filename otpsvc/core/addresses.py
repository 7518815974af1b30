"""The address a per-IP limit counts: an IPv4 address, or the IPv6 network around an address.

One IPv6 host commonly holds a whole /64, so counting single IPv6 addresses would let anyone
rotate the low bits for a fresh budget each time; IPv4-mapped IPv6 addresses count as IPv4.
"""

from __future__ import annotations

import ipaddress


def address_bucket(raw: str, ipv6_prefix: int) -> str:
    """``198.51.100.7`` -> itself; ``2001:db8:1:2:a:b:c:d`` -> ``2001:db8:1:2::/64``.

    Anything that is not an IP address (a unix socket's empty address) counts as one bucket.
    """
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)
