"""Who may do what on the control socket (layer L1, pure).

Owns: the role names, a role's members (uids, gids and the sandbox role's longest grant) as
the config file's `[roles]` gives them (aitherfwd/config.py parses it), and `Authorizer`,
the roles of a peer from its credentials: root is always admin; admin implies every role.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("read", "report", "sandbox", "admin")


@dataclass(frozen=True, slots=True)
class RoleMembers:
    uids: frozenset[int] = frozenset()
    gids: frozenset[int] = frozenset()
    max_ttl: int | None = None  # sandbox role: the longest grant its members may ask for


class Authorizer:
    """Roles of a peer: root is always admin; admin implies every other role."""

    def __init__(self, roles: dict[str, RoleMembers]) -> None:
        self.roles = roles

    def roles_of(self, uid: int, gid: int, groups: tuple[int, ...]) -> set[str]:
        if uid == 0:
            return set(ROLES)
        gids = {gid, *groups}
        have = {name for name, m in self.roles.items() if uid in m.uids or gids & m.gids}
        return set(ROLES) if "admin" in have else have

    def allows(self, role: str, uid: int, gid: int, groups: tuple[int, ...]) -> bool:
        return role in self.roles_of(uid, gid, groups)
