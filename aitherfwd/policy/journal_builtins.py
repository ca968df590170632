"""The built-in journal sources: OpenSSH, nginx, Apache (layer L1, pure data).

Owns: for each builtin, the journal match (which entries are read at all), its patterns
(each a regular expression over MESSAGE with a named group `address`, a threat type and a
severity) and sample lines of the real daemons — lines that must give a threat (with the
address they give) and lines that must not. The samples are the builtins' proof: unit tests
run every pattern against them and `aitherfwd check` reports a pattern that matches none.

Every pattern is anchored at both ends where the daemon's own text surrounds the
attacker-controlled parts (a user name may contain " from 10.0.0.1"): the address is taken
from the place the daemon writes it, never from text a client chose.

The matches rely on fields journald sets itself from the sender's credentials (`_UID`,
`_SYSTEMD_UNIT`), which a local user cannot forge: `logger -t sshd "Failed password for root
from 192.0.2.1 port 1 ssh2"` run by an unprivileged user is not read by `builtin: openssh`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aitherfwd.policy.model import JournalPattern, Severity

# fields journald derives from the sender's kernel-verified credentials or cgroup
TRUSTED_FIELDS = frozenset({"_UID", "_GID", "_SYSTEMD_UNIT", "_SYSTEMD_SLICE", "_SYSTEMD_CGROUP"})
MODES = ("normal", "aggressive")


@dataclass(frozen=True, slots=True)
class Builtin:
    match: tuple[tuple[str, tuple[str, ...]], ...]
    patterns: tuple[JournalPattern, ...]
    aggressive: tuple[JournalPattern, ...]  # added by `mode: aggressive`
    # (line, the address it must give) and lines that must give nothing
    samples: tuple[tuple[str, str], ...]
    quiet: tuple[str, ...]
    aggressive_samples: tuple[tuple[str, str], ...] = ()


def _p(regex: str, kind: str, severity: Severity = Severity.MEDIUM) -> JournalPattern:
    return JournalPattern(re.compile(regex), kind, severity)


_PORT = r" port \d+"
_OPENSSH = Builtin(
    match=(("SYSLOG_IDENTIFIER", ("sshd", "sshd-session")), ("_UID", ("0",))),
    patterns=(
        _p(
            r"^(?:error: )?Failed (?:password|keyboard-interactive/pam|none) for "
            r"(?:invalid user )?.* from (?P<address>\S+)" + _PORT + r"(?: ssh2)?$",
            "SSH_AUTH_FAILURE",
        ),
        _p(r"^Invalid user .* from (?P<address>\S+)(?:" + _PORT + ")?$", "SSH_INVALID_USER"),
        _p(
            r"^User .+ from (?P<address>\S+) not allowed because "
            r"(?:not listed in AllowUsers|listed in DenyUsers|not in any group"
            r"|a group is listed in DenyGroups|none of user's groups are listed in AllowGroups)$",
            "SSH_USER_NOT_ALLOWED",
        ),
        _p(
            r"^(?:error: )?maximum authentication attempts exceeded for (?:invalid user )?.* "
            r"from (?P<address>\S+)" + _PORT + r"(?: ssh2)? \[preauth\]$",
            "SSH_MAX_AUTH_TRIES",
        ),
    ),
    aggressive=(
        _p(
            r"^(?:Connection (?:closed|reset) by|Disconnected from) "
            r"(?:(?:invalid|authenticating) user .* )?(?P<address>\S+)" + _PORT + r" \[preauth\]$",
            "SSH_PREAUTH_DISCONNECT",
            Severity.LOW,
        ),
        _p(
            r"^banner exchange: Connection from (?P<address>\S+)" + _PORT + r": invalid format$",
            "SSH_BAD_PROTOCOL",
            Severity.LOW,
        ),
        _p(
            r"^Unable to negotiate with (?P<address>\S+)" + _PORT + r": no matching .*$",
            "SSH_BAD_PROTOCOL",
            Severity.LOW,
        ),
    ),
    samples=(
        ("Failed password for root from 203.0.113.5 port 51234 ssh2", "203.0.113.5"),
        ("Failed password for invalid user admin from 203.0.113.6 port 40022 ssh2", "203.0.113.6"),
        (
            "Failed keyboard-interactive/pam for invalid user oracle from 2001:db8::7 port 5 ssh2",
            "2001:db8::7",
        ),
        ("Failed none for invalid user guest from 203.0.113.8 port 33012 ssh2", "203.0.113.8"),
        ("Invalid user admin from 203.0.113.9 port 51234", "203.0.113.9"),
        # a user name is the client's text: the address is the one sshd wrote last
        ("Invalid user x from 10.0.0.1 from 203.0.113.10 port 4711", "203.0.113.10"),
        (
            "Failed password for invalid user a from 10.0.0.1 port 1 ssh2 from 203.0.113.11 "
            "port 4711 ssh2",
            "203.0.113.11",
        ),
        (
            "User root from 203.0.113.12 not allowed because not listed in AllowUsers",
            "203.0.113.12",
        ),
        (
            "User bob from 203.0.113.13 not allowed because none of user's groups are listed "
            "in AllowGroups",
            "203.0.113.13",
        ),
        (
            "error: maximum authentication attempts exceeded for root from 203.0.113.14 "
            "port 51234 ssh2 [preauth]",
            "203.0.113.14",
        ),
        (
            "maximum authentication attempts exceeded for invalid user test from "
            "2001:db8::15 port 22 ssh2 [preauth]",
            "2001:db8::15",
        ),
    ),
    aggressive_samples=(
        ("Connection closed by 203.0.113.20 port 51234 [preauth]", "203.0.113.20"),
        ("Connection reset by 203.0.113.21 port 51234 [preauth]", "203.0.113.21"),
        (
            "Connection closed by authenticating user root 203.0.113.22 port 51234 [preauth]",
            "203.0.113.22",
        ),
        ("Disconnected from invalid user admin 203.0.113.23 port 1 [preauth]", "203.0.113.23"),
        (
            "banner exchange: Connection from 203.0.113.24 port 51234: invalid format",
            "203.0.113.24",
        ),
        (
            "Unable to negotiate with 203.0.113.25 port 51234: no matching key exchange method "
            "found. Their offer: diffie-hellman-group1-sha1",
            "203.0.113.25",
        ),
    ),
    quiet=(
        "Accepted password for alice from 203.0.113.30 port 51234 ssh2",
        "Accepted publickey for alice from 203.0.113.30 port 51234 ssh2: ED25519 SHA256:AbC",
        # a client offering keys the server does not know is not an attack
        "Failed publickey for alice from 203.0.113.30 port 51234 ssh2: ED25519 SHA256:AbC",
        # PAM says the same as the "Failed password" line that follows it: counted once
        "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= "
        "rhost=203.0.113.30  user=root",
        "Received disconnect from 203.0.113.30 port 51234:11: disconnected by user",
        "Disconnected from user alice 203.0.113.30 port 51234",
        "Connection closed by 203.0.113.30 port 51234 [preauth]",  # aggressive mode only
        "Server listening on 0.0.0.0 port 22.",
        "pam_unix(sshd:session): session opened for user alice(uid=1000) by (uid=0)",
    ),
)

_NGINX_TIME = r"(?:\d{4}/\d\d/\d\d \d\d:\d\d:\d\d )?"
_NGINX = Builtin(
    match=(("_SYSTEMD_UNIT", ("nginx.service",)),),
    patterns=(
        # the user name is the client's and nginx does not escape it: no '"' is accepted
        # in it, so nothing it holds can pose as the client field that follows
        _p(
            "^" + _NGINX_TIME + r"\[error\] \d+#\d+: \*\d+ user \"[^\"]*\":? "
            r"(?:was not found in \"[^\"]*\"|password mismatch), "
            r"client: (?P<address>[^,\s]+), server: ",
            "HTTP_AUTH_FAILURE",
        ),
    ),
    aggressive=(),
    samples=(
        (
            '2024/03/01 10:00:00 [error] 4242#4242: *17 user "admin" was not found in '
            '"/etc/nginx/.htpasswd", client: 203.0.113.40, server: example.org, request: '
            '"GET /admin HTTP/1.1", host: "example.org"',
            "203.0.113.40",
        ),
        (
            '[error] 4242#4242: *18 user "admin": password mismatch, client: 2001:db8::41, '
            'server: example.org, request: "GET /admin HTTP/1.1", host: "example.org"',
            "2001:db8::41",
        ),
    ),
    quiet=(
        # a browser's first request carries no credentials: normal
        "2024/03/01 10:00:00 [error] 4242#4242: *19 no user/password was provided for basic "
        'authentication, client: 203.0.113.42, server: example.org, request: "GET / HTTP/1.1"',
        # a forged client field inside the user name gives nothing
        '2024/03/01 10:00:00 [error] 4242#4242: *20 user "x", client: 10.0.0.1, server: y": '
        'password mismatch, client: 203.0.113.43, server: example.org, request: "GET / HTTP/1.1"',
        '2024/03/01 10:00:00 [error] 4242#4242: *21 open() "/usr/share/nginx/html/x" failed '
        "(2: No such file or directory), client: 203.0.113.44, server: example.org",
    ),
)

_APACHE = Builtin(
    match=(("_SYSTEMD_UNIT", ("apache2.service", "httpd.service")),),
    patterns=(
        _p(
            r"^(?:\[[^\]]+\] )?\[auth_(?:basic|digest|form):error\] \[pid [^\]]+\] "
            r"\[client (?P<address>[^\]\s]+?)(?::\d+)?\] "
            r"AH0(?:1614|1617|1618|1790|1792|1794|1807|1808):",
            "HTTP_AUTH_FAILURE",
        ),
    ),
    aggressive=(),
    samples=(
        (
            "[Sun Mar 01 10:00:00.123456 2024] [auth_basic:error] [pid 4242:tid 1400] "
            "[client 203.0.113.50:51234] AH01617: user admin: authentication failure for "
            '"/private": Password Mismatch',
            "203.0.113.50",
        ),
        (
            "[auth_basic:error] [pid 4242] [client 203.0.113.51:51234] AH01618: user admin "
            "not found: /private",
            "203.0.113.51",
        ),
        (
            "[Sun Mar 01 10:00:00.123456 2024] [auth_digest:error] [pid 4242] "
            "[client 2001:db8::52:41234] AH01790: user `admin' in realm `private' not found: /x",
            "2001:db8::52",
        ),
        (
            "[Sun Mar 01 10:00:00.123456 2024] [auth_basic:error] [pid 4242] "
            "[client 203.0.113.53:51234] AH01614: client used wrong authentication scheme: /x",
            "203.0.113.53",
        ),
    ),
    quiet=(
        "[Sun Mar 01 10:00:00.123456 2024] [core:error] [pid 4242] [client 203.0.113.54:5] "
        "AH00126: Invalid URI in request GET /../ HTTP/1.1",
        "[Sun Mar 01 10:00:00.123456 2024] [mpm_event:notice] [pid 4242:tid 1400] AH00489: "
        "Apache/2.4.57 (Debian) configured -- resuming normal operations",
    ),
)

BUILTINS: dict[str, Builtin] = {"openssh": _OPENSSH, "nginx": _NGINX, "apache": _APACHE}
