"""DNS lookups for allowlisted names (layer L2): the only importer of dnspython.

Owns: asking the policy's resolvers for A and AAAA records with their TTLs, many names at
once (bounded concurrency), and turning every dnspython failure into `ResolveError` at this
edge. A name answers with addresses, or fails: NXDOMAIN, SERVFAIL, a timeout and an empty
answer are all failures, so the caller keeps what it had (see egress/dns.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from types import ModuleType

from aitherfwd.errors import AitherError

Answer = tuple[tuple[str, int], ...]  # (address text, ttl)
CONCURRENCY = 64


class ResolveError(AitherError):
    code = "E-RESOLVE"


def _dnspython() -> ModuleType:
    """dnspython, loaded on first use: it costs the daemon ~5 MB of RSS, spent only when
    the policy names resolvers."""
    import dns.asyncresolver  # noqa: PLC0415 - see the docstring
    import dns.exception  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    return dns


class Resolver:
    """A and AAAA through the given servers only (never /etc/resolv.conf)."""

    def __init__(self, servers: Sequence[str], *, timeout: float = 2.0, port: int = 53) -> None:
        self._dns = _dnspython()
        self._r = self._dns.asyncresolver.Resolver(configure=False)
        self._r.nameservers = list(servers)
        self._r.port = port
        self._r.timeout = timeout  # per server try
        self._r.lifetime = timeout * 2  # per query, all tries
        self._r.cache = None

    async def resolve(self, name: str) -> Answer:
        """Addresses and TTLs of `name` (A and AAAA); raises ResolveError."""
        results = await asyncio.gather(
            self._one(name, "A"), self._one(name, "AAAA"), return_exceptions=True
        )
        out: list[tuple[str, int]] = []
        errors: list[str] = []
        for res in results:
            if isinstance(res, BaseException):
                errors.append(str(res) or type(res).__name__)
            else:
                out += res
        if not out:
            raise ResolveError(f"{name}: " + ("; ".join(errors) or "no A or AAAA records"))
        return tuple(sorted(set(out)))

    async def _one(self, name: str, rdtype: str) -> list[tuple[str, int]]:
        try:
            answer = await self._r.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except self._dns.resolver.NXDOMAIN:
            raise ResolveError("NXDOMAIN") from None
        except (self._dns.exception.DNSException, OSError) as exc:
            raise ResolveError(f"{rdtype}: {type(exc).__name__}: {exc}") from exc
        if answer.rrset is None:
            return []
        ttl = int(answer.rrset.ttl)
        return [(str(ipaddress.ip_address(r.to_text())), ttl) for r in answer.rrset]

    async def resolve_many(
        self, names: Iterable[str], concurrency: int = CONCURRENCY
    ) -> dict[str, Answer | ResolveError]:
        """Every name at once, at most `concurrency` in flight; failures as values."""
        gate = asyncio.Semaphore(concurrency)

        async def one(name: str) -> tuple[str, Answer | ResolveError]:
            async with gate:
                try:
                    return name, await self.resolve(name)
                except ResolveError as exc:
                    return name, exc

        pairs = await asyncio.gather(*(one(n) for n in names))
        return dict(pairs)


def resolve_sync(servers: Sequence[str], names: Iterable[str]) -> dict[str, Answer | ResolveError]:
    """For `aitherfwd check`: resolve once, outside any event loop."""
    return asyncio.run(Resolver(servers).resolve_many(list(names)))
