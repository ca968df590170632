"""The service registry in the shapes other tools write it, rewritten into ours (layer L1).

Owns: turning the seed's registry shapes into the canonical `services:` mapping
(`Name: {ports: [...], protocol: ..., description: ...}`) before `parse` reads it, so
every diagnostic stays located at the node the user wrote. Accepted besides the canonical
form (docs/policy.md, *services*):

    services:                       # a list of entries with a name
      - {name: Secrets, port: 8111, protocol: tcp}
    services:
      Secrets: 8111                 # a bare port (or a list of ports / ranges)
      Strata: {port: 8136}          # `port` (one port) beside `ports`

Anything else is left as it is, for `parse` to report. Must not read files.
"""

from __future__ import annotations

from aitherfwd.policy.diagnostics import Reporter
from aitherfwd.policy.source import YNode

ENTRY_KEYS = {"name", "port", "ports", "protocol", "description"}


def canonical_services(node: YNode, path: str, report: Reporter) -> YNode | None:
    """The registry as a canonical mapping node; None (reported) when it cannot be."""
    if node.is_list:
        return _from_list(node, path, report)
    if not node.is_map:
        return node  # parse reports the type
    return YNode(
        {name: _entry(child) for name, child in node.value.items()},
        node.pos,
        key_pos=node.key_pos,
    )


def _entry(child: YNode) -> YNode:
    """`8111`, `[8111, "9000-9010"]` or `{port: 8111, ...}` → `{ports: ..., ...}`."""
    if child.is_map:
        value = dict(child.value)
        if "port" in value and "ports" not in value:
            value["ports"] = value.pop("port")
        return YNode(value, child.pos, key_pos=child.key_pos)
    if child.value is None:
        return child
    return YNode({"ports": child}, child.pos, key_pos=child.key_pos)


def _from_list(node: YNode, path: str, report: Reporter) -> YNode | None:
    out: dict[str, YNode] = {}
    ok = True
    for i, item in enumerate(node.value):
        at = f"{path}[{i}]"
        name = item.value.get("name") if item.is_map else None
        if name is None or name.is_map or name.is_list or name.value is None:
            report.error(
                "E-MISSING-KEY",
                f"{at}.name",
                "a service in a list needs a name: {name: X, port: N}",
                item.pos,
            )
            ok = False
            continue
        key = str(name.value) if isinstance(name.value, str) else str(name.raw)
        if key in out:
            report.error(
                "E-DUPLICATE-NAME", f"{at}.name", f"service '{key}' is defined twice", name.pos
            )
            ok = False
            continue
        rest = {k: v for k, v in item.value.items() if k != "name"}
        out[key] = _entry(YNode(rest, item.pos, key_pos=name.pos))
    return YNode(out, node.pos, key_pos=node.key_pos) if ok else None
