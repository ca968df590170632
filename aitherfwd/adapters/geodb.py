"""Reading country databases and list files (layer L2; the only importer of maxminddb).

Owns: walking a MaxMind DB format file (GeoLite2/GeoIP2 Country, DB-IP lite country: any
with `country.iso_code`) once, node by node, into merged ranges per country — no lookup per
address, and each distinct record decoded once (the records are shared by pointer) —, and
reading a list file (bounded, regular files only) into `geo.ranges.ParsedList`. Every
failure (missing, unreadable, too large, not a MaxMind DB, a corrupt tree) becomes a
`GeoReadError`; the caller keeps the last good contents.

Debian 12's maxminddb (2.2) has no `Reader.__iter__`, so the search tree is walked here
with the reader's node and data-pointer readers; IPv4 in an IPv6 database lives at ::/96,
and the aliases MaxMind writes to it (::ffff:0:0/96, 2002::/16) are skipped, so each IPv4
network counts once.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aitherfwd.adapters.files import read_bytes
from aitherfwd.errors import AitherError
from aitherfwd.geo.ranges import Collector, ParsedList, PrefixSet, parse_list

MAX_DATABASE_BYTES = 512 << 20  # GeoLite2-Country is ~10 MB, DB-IP lite country ~20 MB
MAX_LIST_BYTES = 64 << 20  # ~2,000,000 lines
UNKNOWN = "??"  # a network whose record has no country


class GeoReadError(AitherError):
    def __init__(self, message: str) -> None:
        super().__init__(message, code="E-GEO-READ")


def fingerprint(path: Path) -> str | None:
    """Size, mtime, ctime and inode: unchanged means the last read still holds."""
    try:
        st = path.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def read_list(path: Path) -> ParsedList:
    try:
        data = read_bytes(path, MAX_LIST_BYTES)
    except OSError as exc:
        raise GeoReadError(f"cannot read list {path}: {exc.strerror or exc}") from exc
    return parse_list(data.decode("utf-8", errors="replace"))


def read_countries(path: Path) -> dict[str, PrefixSet]:
    """Every country's merged ranges (key: ISO code, or '??' without one)."""
    import maxminddb  # noqa: PLC0415 - only a policy with countries needs it (~2.5 MB RSS)

    try:
        # opened without blocking (a FIFO put there would hang the reader), checked on the
        # descriptor, then mapped through it: no window to swap the file in between
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise GeoReadError(f"cannot open GeoIP database {path}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise GeoReadError(f"{path} is not a regular file")
        if st.st_size > MAX_DATABASE_BYTES:
            raise GeoReadError(f"{path} is {st.st_size} bytes; at most {MAX_DATABASE_BYTES}")
        reader = maxminddb.open_database(f"/proc/self/fd/{fd}", maxminddb.MODE_MMAP)
    except GeoReadError:
        raise
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoReadError(f"cannot open GeoIP database {path}: {exc}") from exc
    finally:
        os.close(fd)
    try:
        collect = Collector()
        for family, first, last, code in _networks(reader):
            collect.add(code, family, first, last)
        return collect.build()
    except (ValueError, IndexError, KeyError, TypeError, maxminddb.InvalidDatabaseError) as exc:
        raise GeoReadError(f"corrupt GeoIP database {path}: {exc}") from exc
    finally:
        reader.close()


def _country(record: Any) -> str:
    if not isinstance(record, dict):
        return UNKNOWN
    for key in ("country", "registered_country"):
        sub = record.get(key)
        if isinstance(sub, dict) and isinstance(sub.get("iso_code"), str):
            return str(sub["iso_code"]).upper()
    return UNKNOWN


def _networks(reader: Any) -> Iterator[tuple[int, int, int, str]]:
    """(family, first, last, country) per network of the search tree."""
    meta = reader.metadata()
    node_count, bits = int(meta.node_count), 128 if meta.ip_version == 6 else 32
    read_node, resolve = reader._read_node, reader._resolve_data_pointer  # private: see docstring
    ipv4_start = 0
    if bits == 128:
        for _ in range(96):
            if ipv4_start >= node_count:
                break
            ipv4_start = read_node(ipv4_start, 0)
    codes: dict[int, str] = {}
    stack: list[tuple[int, int, int]] = [(0, 0, 0)]  # node, depth, address bits so far
    while stack:
        node, depth, value = stack.pop()
        if depth >= bits:
            raise ValueError(f"search tree deeper than {bits} bits")
        for bit in (1, 0):
            record = read_node(node, bit)
            child, cdepth = (value << 1) | bit, depth + 1
            if record < node_count:
                if record == ipv4_start and bits == 128 and cdepth != 96:
                    continue  # an alias of the IPv4 subtree
                stack.append((record, cdepth, child))
            elif record > node_count:
                code = codes.get(record)
                if code is None:
                    code = codes[record] = _country(resolve(record))
                yield _network(bits, child, cdepth, code)


def _network(bits: int, value: int, depth: int, code: str) -> tuple[int, int, int, str]:
    span = bits - depth
    first = value << span
    last = first | ((1 << span) - 1)
    if bits == 128 and depth >= 96 and first >> 32 == 0:
        return 4, first, last, code  # ::a.b.c.d/96+n is a.b.c.d/n
    return (6 if bits == 128 else 4), first, last, code


def address_country(path: Path, address: str) -> str | None:
    """One lookup (for tests and `explain` tooling; the daemon never looks up per address)."""
    import maxminddb  # noqa: PLC0415 - see read_countries

    with maxminddb.open_database(str(path)) as reader:
        code = _country(reader.get(str(ipaddress.ip_address(address))))
    return None if code == UNKNOWN else code
