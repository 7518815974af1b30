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


def pack_bucket(bucket: str) -> bytes:
    """An :func:`address_bucket` in a few bytes (to seal it compactly): 0 for ``unknown``, 4 and
    the address for IPv4, 6, the prefix length and the network's bytes for IPv6."""
    if bucket == "unknown":
        return b"\x00"
    network = ipaddress.ip_network(bucket, strict=False)
    if network.version == 4:
        return b"\x04" + network.network_address.packed
    kept = -(-network.prefixlen // 8)
    return b"\x06" + bytes([network.prefixlen]) + network.network_address.packed[:kept]


def unpack_bucket(data: bytes) -> tuple[str, bytes]:
    """The bucket :func:`pack_bucket` packed at the start of ``data``, and what follows it."""
    if data[:1] == b"\x04":
        return str(ipaddress.IPv4Address(data[1:5])), data[5:]
    if data[:1] == b"\x06":
        prefix = data[1]
        kept = -(-prefix // 8)
        address = ipaddress.IPv6Address(data[2 : 2 + kept].ljust(16, b"\x00"))
        return str(ipaddress.IPv6Network((address, prefix))), data[2 + kept :]
    return "unknown", data[1:]
