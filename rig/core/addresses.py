"""Which hosts and peers are this PC: the checks behind "off loopback you need keys / an allow-list".

Kept free of ZeroMQ so that loading a config (which uses them) imports no socket library.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

#: Hosts that are this PC only: a bind there needs no keys.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(host: str) -> bool:
    """Whether binding on ``host`` keeps a socket on this PC (``0.0.0.0``, ``*`` and LAN addresses do not)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or a wildcard


def endpoint_host(endpoint: str) -> str:
    """``tcp://10.0.0.5:5570`` -> ``10.0.0.5`` (``*`` for a wildcard; "" when it is not tcp://HOST:PORT)."""
    if not endpoint.startswith("tcp://"):
        return ""
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0]
    return host.strip("[]")


def normalize_address(address: str) -> str:
    """An IP address as a peer reports it, in the form allow-lists hold (IPv4-mapped IPv6 -> IPv4)."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def check_addresses(addresses: Iterable[str]) -> list[str]:
    """The allow-list in normal form; raises ``ValueError`` naming an entry that is not an IP address."""
    out = []
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"{address!r} is not an IP address (a scope PC's address, e.g. \"10.0.0.5\")") from None
        out.append(normalize_address(address))
    return out
