"""Where a webhook may go: http(s) only, and never to the hub's own neighbourhood.

A job's `webhook_url` is chosen by whoever submits the job, so it is hostile input: without a
check it reaches Redis on 127.0.0.1, a cloud metadata service on 169.254.169.254 or an internal
admin page. Addresses are checked where they are used, at connect time (`GuardedResolver` is the
resolver aiohttp connects with), so a name that resolves differently later (DNS rebinding) is
checked again; an IP literal is checked before the request. Hosts in WEBHOOK_ALLOWED_HOSTS (as
written in the URL) skip the address check.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from .errors import TargetRefused

__all__ = ["GuardedResolver", "TargetPolicy", "TargetRefused", "blocked_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public internet address (loopback, private, link-local and
    metadata, CGNAT, multicast, reserved), or None when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for attribute, name in (
        ("is_loopback", "a loopback"),
        ("is_link_local", "a link-local (cloud metadata)"),
        ("is_private", "a private"),
        ("is_multicast", "a multicast"),
        ("is_unspecified", "an unspecified"),
        ("is_reserved", "a reserved"),
    ):
        if getattr(address, attribute):
            return f"{address} is {name} address"
    if not address.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
        return f"{address} is not a public address"
    return None


def normalize_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


class TargetPolicy:
    def __init__(self, allowed_hosts: tuple[str, ...] = ()) -> None:
        self.allowed = frozenset(normalize_host(h) for h in allowed_hosts if h.strip())

    def allows_any_address(self, host: str) -> bool:
        return normalize_host(host) in self.allowed

    def check_url(self, url: str) -> str:
        """The URL's host; raises TargetRefused for a scheme or an IP literal it may not use."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise TargetRefused(f"webhook URLs must be http:// or https://, not {parts.scheme}://")
        host = parts.hostname
        if not host:
            raise TargetRefused("the webhook URL has no host")
        if self.allows_any_address(host):
            return host
        try:
            literal = ipaddress.ip_address(normalize_host(host))
        except ValueError:
            return host  # a name: checked when it is resolved, at connect time
        self._refuse_if_blocked(host, literal)
        return host

    def _refuse_if_blocked(self, host: str, address: IPAddress) -> None:
        reason = blocked_reason(address)
        if reason is not None:
            raise TargetRefused(
                f"webhook host {host} refused: {reason}; add it to WEBHOOK_ALLOWED_HOSTS "
                "if the hub may call it"
            )

    def filter_resolved(self, host: str, results: list[ResolveResult]) -> list[ResolveResult]:
        """The resolved addresses the hub may connect to; refuses when none is left."""
        if self.allows_any_address(host):
            return results
        for result in results:
            self._refuse_if_blocked(host, ipaddress.ip_address(result["host"]))
        return results


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, with every address it returns checked against the policy."""

    def __init__(self, policy: TargetPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        return self.policy.filter_resolved(host, results)

    async def close(self) -> None:
        await self._inner.close()


def resolver_kwargs(policy: TargetPolicy) -> dict[str, Any]:
    """TCPConnector arguments for webhook sessions: the guarded resolver, no DNS cache (each
    connection resolves and checks again)."""
    return {"resolver": GuardedResolver(policy), "use_dns_cache": False}
