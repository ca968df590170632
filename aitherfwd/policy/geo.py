"""The `geoip:` and `lists:` sections, and every reference to them (layer L1, pure).

Owns: the schema of `geoip: {database, block_countries}` and of `lists: [{name, path,
action}]`, and the checks that need the whole policy: a rule's `source_countries` are ISO
3166-1 alpha-2 codes (with a did-you-mean: `UK` -> `GB`, `DEU` -> `DE`) and need a
`geoip:` section; a rule's `source_lists` and a zone's `list` name a defined list. Reading
the database and the list files is the daemon's business (adapters/geodb.py), never here.
Must not import adapters or do I/O.
"""

from __future__ import annotations

from enum import StrEnum

from aitherfwd.policy.countries import COUNTRIES
from aitherfwd.policy.diagnostics import Reporter, did_you_mean
from aitherfwd.policy.fields import Fields
from aitherfwd.policy.model import GeoIP, Policy, PrefixList
from aitherfwd.policy.source import YNode, position_of

GEOIP_KEYS = {"database", "block_countries"}
LIST_KEYS = {"name", "path", "action"}
MAX_LISTS = 64  # each list is two kernel sets
MAX_COUNTRIES = 260
# common mistakes a spelling distance does not catch
ALIASES = {"UK": "GB", "EL": "GR", "GBR": "GB", "USA": "US", "KS": "XK"}


class ListAction(StrEnum):
    DENY = "deny"  # dropped before any rule, like block_countries
    MATCH = "match"  # only matched by rules (source_lists) and zones (list)


def country_hint(code: str) -> str:
    """' (did you mean 'XX'?)' for an unknown code, or ''."""
    upper = code.upper()
    if upper in ALIASES:
        return f" (did you mean '{ALIASES[upper]}'?)"
    if len(upper) == 3 and upper[:2] in COUNTRIES:  # an alpha-3 code, mostly: DEU, FRA
        return f" (did you mean '{upper[:2]}'?)"
    import difflib  # noqa: PLC0415 - only a misspelt name needs it, not the daemon

    close = difflib.get_close_matches(upper, sorted(COUNTRIES), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def country_code(f: Fields, node: YNode, path: str) -> str | None:
    text = f.string(node, path)
    if text is None:
        return None
    code = text.strip().upper()
    if code not in COUNTRIES:
        f.report.error(
            "E-COUNTRY",
            path,
            f"'{text}' is not an ISO 3166-1 alpha-2 country code{country_hint(text)}",
            node.pos,
        )
        return None
    return code


def parse_geoip(node: YNode, f: Fields) -> GeoIP | None:
    m = f.mapping(node, "geoip", GEOIP_KEYS, frozenset({"database"}))
    if m is None or "database" not in m:
        return None
    database = f.string(m["database"], "geoip.database")
    codes: list[str] | None = []
    if "block_countries" in m:
        codes = f.each(
            m["block_countries"],
            "geoip.block_countries",
            lambda n, p: country_code(f, n, p),
            scalar_ok=True,
        )
    if database is None or codes is None:
        return None
    if not database.startswith("/"):
        f.report.error(
            "E-GEOIP-PATH",
            "geoip.database",
            f"'{database}' is not an absolute path; the daemon reads it from any directory",
            m["database"].pos,
        )
        return None
    return GeoIP(database, tuple(sorted(set(codes))))


def parse_lists(node: YNode, f: Fields) -> tuple[PrefixList, ...] | None:
    items = f.items(node, "lists")
    if items is None:
        return None
    out: list[PrefixList] = []
    ok = True
    for i, item in enumerate(items):
        path = f"lists[{i}]"
        m = f.mapping(item, path, LIST_KEYS, frozenset({"name", "path"}))
        if m is None or "name" not in m or "path" not in m:
            ok = False
            continue
        name = f.name(m["name"], f"{path}.name")
        file = f.string(m["path"], f"{path}.path")
        action = f.enum(m["action"], f"{path}.action", ListAction) if "action" in m else None
        if name is None or file is None or ("action" in m and action is None):
            ok = False
            continue
        if any(p.name == name for p in out):
            f.report.error(
                "E-DUPLICATE-NAME", f"{path}.name", f"list '{name}' is defined twice", m["name"].pos
            )
            ok = False
            continue
        if not file.startswith("/"):
            f.report.error(
                "E-LIST-PATH", f"{path}.path", f"'{file}' is not an absolute path", m["path"].pos
            )
            ok = False
            continue
        out.append(PrefixList(name, file, str(action or ListAction.MATCH)))
    if len(out) > MAX_LISTS:
        f.report.error(
            "E-RANGE", "lists", f"{len(out)} lists; at most {MAX_LISTS} are supported", node.pos
        )
        ok = False
    return tuple(out) if ok else None


def check_geo(policy: Policy, root: YNode | None, report: Reporter) -> None:
    """References across sections: countries and lists used by rules and zones."""
    names = [p.name for p in policy.lists]
    for i, rule in enumerate(policy.rules):
        for j in range(len(rule.source_countries)):
            at = position_of(root, "rules", i, "source_countries", j)
            path = f"rules[{i}].source_countries[{j}]"
            if policy.geoip is None:  # the codes themselves are checked in policy/rules.py
                report.error(
                    "E-NO-GEOIP",
                    path,
                    "source_countries needs a geoip: section with the database to read",
                    at,
                )
        for j, name in enumerate(rule.source_lists):
            if name not in names:
                report.error(
                    "E-UNKNOWN-LIST",
                    f"rules[{i}].source_lists[{j}]",
                    f"unknown list '{name}'{did_you_mean(name, names)}",
                    position_of(root, "rules", i, "source_lists", j),
                )
    for i, zone in enumerate(policy.zones):
        if zone.list is not None and zone.list not in names:
            report.error(
                "E-UNKNOWN-LIST",
                f"zones[{i}].list",
                f"unknown list '{zone.list}'{did_you_mean(zone.list, names)}",
                position_of(root, "zones", i, "list"),
            )
