"""Egress control and sandbox grants, end to end: the real daemon in the protected (client)
namespace, a real DNS server (dnsmasq) and HTTP listeners in the "remote" (server)
namespace, real outbound TCP connections from the protected namespace. IPv4 and IPv6."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aitherfwd.adapters.nft import Nft
from aitherfwd.client import SandboxClient, SandboxError
from lab import AITHERFWD
from lab.daemon import DaemonProc
from lab.netns import inside, must
from lab.network import Client, Lab
from lab.wait import until

pytestmark = pytest.mark.kernel

PORT, OTHER_PORT = 8080, 9090
NAME = "api.allowed.test"
SECOND = "second.allowed.test"
# remote addresses (on the server side of client 1's link)
ALLOWED, MOVED, OTHER, GRANTED, BAD, KEPT = (f"10.77.1.{i}" for i in (10, 12, 11, 13, 66, 14))
ALLOWED6, OTHER6, GRANTED6 = "fd77:0:0:1::10", "fd77:0:0:1::11", "fd77:0:0:1::13"
DENIED, GIT, GIT6 = "10.77.1.20", "10.77.1.21", "fd77:0:0:1::21"  # named rules
FOLLOW = "10.77.1.22"  # where GIT_NAME moves to while a grant for it lasts
GIT_NAME = "git.allowed.test"
# the cloud metadata address, made to exist in the remote namespace (and routed to it), so
# a real connection attempt stays inside the lab
METADATA = "169.254.169.254"
REMOTE = [
    *(ALLOWED, MOVED, OTHER, GRANTED, BAD, KEPT, ALLOWED6, OTHER6, GRANTED6),
    *(DENIED, GIT, GIT6, FOLLOW),
]

POLICY = f"""\
version: 1
settings: {{default_policy: allow}}
egress:
  default_action: reject
  resolvers: [10.77.1.1, "fd77:0:0:1::1"]
  rules:
    - {{name: block-cloud-metadata, destination: 169.254.169.254, action: deny}}
    - {{name: deny-one, destination: {DENIED}, action: reject}}
    - {{name: git, destination: {GIT_NAME}, protocol: tcp, ports: [{OTHER_PORT}], action: allow}}
  allowlist:
    domains: [{NAME}]
    ips: [{DENIED}]
    ports: [{PORT}]
  known_bad: [{BAD}, "fd77:0:0:1::66"]
  dns: {{min_refresh: 1s, max_refresh: 1h, grace: 1s}}
sandbox:
  max_ttl: 1h
  default_ttl: 10m
  allowed_ports: [{PORT}]
"""
CONFIG = """\
[control]
mode = "0666"
[roles]
sandbox = {users = ["nobody"], max_ttl = "5m"}
"""


@dataclass
class Dns:
    """dnsmasq in the remote namespace, answering NAME from a hosts file with TTL 1 s."""

    lab: Lab
    tmp: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, *addresses: str) -> None:
        self.answer(*addresses, reload=False)
        conf = self.tmp / "dnsmasq.conf"
        conf.write_text(
            "port=53\nlisten-address=10.77.1.1\nlisten-address=fd77:0:0:1::1\n"
            "bind-interfaces\nno-resolv\nno-hosts\nno-daemon\nlocal-ttl=1\n"
            f"addn-hosts={self.tmp / 'hosts'}\nuser=root\npid-file=\nlog-facility=/dev/null\n"
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.lab.server, "dnsmasq", f"--conf-file={conf}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.2)
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            raise RuntimeError(f"dnsmasq exited {self.proc.returncode}: {err}")

    def answer(
        self,
        *addresses: str,
        reload: bool = True,
        extra: str = "",
        git: tuple[str, ...] = (GIT, GIT6),
    ) -> None:
        lines = "".join(f"{a} {NAME}\n" for a in addresses)
        lines += "".join(f"{a} {GIT_NAME}\n" for a in git)
        (self.tmp / "hosts").write_text(lines + (f"{OTHER} {SECOND}\n" if extra else ""))
        if reload and self.proc is not None:
            self.proc.send_signal(signal.SIGHUP)  # re-reads addn-hosts

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Env:
    lab: Lab
    client: Client
    dns: Dns
    daemon: DaemonProc

    def tcp(self, addr: str, port: int = PORT) -> str:
        return self.lab.tcp(self.client, addr, port, timeout=1.0)

    def sandbox(self) -> SandboxClient:
        return SandboxClient(self.daemon.socket, timeout=30)

    def elements(self, set_name: str) -> list[object]:
        with inside(self.client.ns):
            return Nft().set_elements(set_name)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("egress")
    with Lab(clients_wanted=1) as lab:
        client = lab.clients[0]
        dev = client.server_dev
        for addr in REMOTE:
            plen, extra = ("64", ["nodad"]) if ":" in addr else ("24", [])
            must(["ip", "-n", lab.server, "addr", "add", f"{addr}/{plen}", "dev", dev, *extra])
        must(["ip", "-n", lab.server, "addr", "add", f"{METADATA}/32", "dev", dev])
        must(["ip", "-n", client.ns, "route", "add", f"{METADATA}/32", "via", client.server_v4])
        lab.listen([PORT, OTHER_PORT])
        dns = Dns(lab, tmp)
        dns.start(ALLOWED, ALLOWED6)
        daemon = DaemonProc(client.ns, tmp, POLICY, CONFIG)
        try:
            daemon.start()
            e = Env(lab, client, dns, daemon)
            until(lambda: e.tcp(ALLOWED) == "ok", 15, "the allowlisted name resolved")
            yield e
        finally:
            daemon.cleanup()
            dns.stop()


def test_allowlisted_domain_is_reachable_and_nothing_else(env: Env) -> None:
    assert env.tcp(ALLOWED) == "ok"
    assert env.tcp(ALLOWED6) == "ok"
    assert env.tcp(OTHER) == "refused"  # reject: a TCP reset from our own output chain
    assert env.tcp(OTHER6) == "refused"
    assert env.tcp(ALLOWED, OTHER_PORT) == "refused"  # the allowlist's ports constrain it

    def denied() -> set[tuple[str, int, str]]:
        return {
            (e["dest_ip"], e["dest_port"], e["rule_name"])
            for e in env.daemon.audit_events()
            if e["event"] == "decision" and e["direction"] == "outbound"
        }

    want = {(OTHER, PORT, None), (OTHER6, PORT, None)}
    until(lambda: want <= denied(), 5, "kernel drops of denied egress in the audit log")
    assert set(map(str, env.elements("egress_dom_v4"))) == {ALLOWED}
    counters = env.daemon.ok("GET", "/v1/status")
    assert counters["egress_dns"]["names"] == 2 and counters["egress_dns"]["failing"] == 0


def test_the_metadata_address_is_denied_to_real_connections(env: Env) -> None:
    with inside(env.client.ns):
        before = Nft().counters()["egress_rule_block-cloud-metadata"][0]
    assert env.tcp(METADATA) == "timeout"  # deny: dropped, not answered
    assert env.tcp(METADATA, 80) == "timeout"
    with inside(env.client.ns):
        assert Nft().counters()["egress_rule_block-cloud-metadata"][0] >= before + 2
    refused = env.daemon.request("POST", "/v1/sandbox", {"destination": METADATA, "ttl": "1m"})
    assert refused[0] == 403


def test_named_rules_come_before_the_allowlist_and_take_host_names(env: Env) -> None:
    assert env.tcp(DENIED) == "refused"  # allowlisted IP, but the named rule rejects first
    assert env.tcp(GIT, OTHER_PORT) == "ok"  # a host-name rule, on its own port
    assert env.tcp(GIT6, OTHER_PORT) == "ok"
    assert env.tcp(GIT, PORT) == "refused"
    assert env.sandbox().evaluate(DENIED, PORT)["rule"] == "deny-one"
    assert env.sandbox().evaluate(GIT_NAME, OTHER_PORT)["rule"] == "git"


def test_evaluate_outbound_matches_the_kernel(env: Env) -> None:
    client = env.sandbox()
    for addr, port in ((ALLOWED, PORT), (OTHER, PORT), (ALLOWED, OTHER_PORT), (ALLOWED6, PORT)):
        v = client.evaluate(addr, port)
        kernel = env.tcp(addr, port)
        assert (v["action"] == "allow") == (kernel == "ok"), (addr, port, v, kernel)
    by_name = client.evaluate(NAME, PORT)
    assert by_name["action"] == "allow" and by_name["rule"] == "allowlist"
    assert {a["address"] for a in by_name["addresses"]} == {ALLOWED, ALLOWED6}
    meta = client.evaluate("169.254.169.254", 80)
    assert meta["action"] == "deny" and meta["rule"] == "block-cloud-metadata"
    bad = client.evaluate(BAD, PORT)
    assert bad["rule"] == "known_bad" and env.tcp(BAD) != "ok"


def test_sandbox_grant_opens_a_destination_and_the_kernel_closes_it(env: Env) -> None:
    assert env.tcp(GRANTED) == "refused"
    assert env.tcp(GRANTED6) == "refused"
    client = env.sandbox()
    client.grant(GRANTED, ttl="2s", scope="sandbox-alice")
    assert env.tcp(GRANTED) == "ok"
    client.grant(GRANTED6, ttl="2s", scope="sandbox-alice")
    assert env.tcp(GRANTED6) == "ok"
    assert client.evaluate(GRANTED6, PORT)["rule"] == "sandbox"
    until(lambda: env.tcp(GRANTED) == "refused", 10, "the v4 grant expired in the kernel")
    until(lambda: env.tcp(GRANTED6) == "refused", 10, "the v6 grant expired in the kernel")
    assert client.evaluate(GRANTED, PORT)["action"] == "reject"


def test_grant_with_ports_opens_only_those_ports_and_can_be_revoked(env: Env) -> None:
    client = env.sandbox()
    with pytest.raises(SandboxError) as refused:
        client.grant(OTHER, ports=[OTHER_PORT], scope="sandbox-bob")
    assert refused.value.status == 403 and refused.value.code == "E-PORT-NOT-ALLOWED"
    client.grant(OTHER, ports=[PORT], scope="sandbox-bob")
    client.grant(OTHER6, ports=[PORT], scope="sandbox-bob")
    assert env.tcp(OTHER) == "ok"
    assert env.tcp(OTHER6) == "ok"
    assert env.elements("sandbox_port_v4") and env.elements("sandbox_port_v6")
    client.revoke(OTHER)
    client.revoke(OTHER6)
    assert env.tcp(OTHER) == "refused"
    assert env.tcp(OTHER6) == "refused"
    # a prefix with ports: `prefix . port` elements in the same (interval) sets
    client.grant("10.77.1.8/30", ports=[PORT], scope="sandbox-bob")
    client.grant("fd77:0:0:1::10/124", ports=[PORT], scope="sandbox-bob")
    assert env.tcp(OTHER) == "ok" and env.tcp(OTHER6) == "ok"
    client.revoke("10.77.1.8/30")
    client.revoke("fd77:0:0:1::10/124")
    assert env.tcp(OTHER) == "refused" and env.tcp(OTHER6) == "refused"
    # a host name: every address it resolves to, revoked by the name
    granted = client.grant(GIT_NAME, ports=[PORT], scope="sandbox-bob")["granted"]
    assert {g["destination"] for g in granted} == {GIT, GIT6}
    assert env.tcp(GIT) == "ok" and env.tcp(GIT6) == "ok"
    assert len(client.revoke(GIT_NAME)["revoked"]) == 2
    assert env.tcp(GIT) == "refused"
    assert client.grants() == [] or all(g["destination"] != OTHER for g in client.grants())


def test_a_host_name_grant_follows_the_name_while_it_lasts(env: Env) -> None:
    client = env.sandbox()
    assert env.tcp(FOLLOW) == "refused"
    client.grant(GIT_NAME, ports=[PORT], ttl="1m", scope="sandbox-follow")
    env.dns.answer(ALLOWED, ALLOWED6, git=(GIT, GIT6, FOLLOW))
    try:
        until(lambda: env.tcp(FOLLOW) == "ok", 20, "the name's new address granted")
        grants = {g["destination"]: g for g in client.grants()}
        assert grants[FOLLOW]["host"] == GIT_NAME and grants[FOLLOW]["scope"] == "sandbox-follow"
        assert grants[FOLLOW]["ports"] == [PORT]
        assert grants[FOLLOW]["expires_at"] == grants[GIT]["expires_at"]
    finally:
        env.dns.answer(ALLOWED, ALLOWED6)
        client.revoke(GIT_NAME)
    assert env.tcp(FOLLOW) == "refused"
    assert any(e["event"] == "sandbox_followed" for e in env.daemon.audit_events())


def test_known_bad_and_metadata_are_refused_and_known_bad_beats_a_kernel_grant(env: Env) -> None:
    client = env.sandbox()
    for dest in (BAD, "169.254.169.254", "fd00:ec2::254", "10.77.1.64/28"):
        with pytest.raises(SandboxError) as refused:
            client.grant(dest, scope="sandbox-mallory")
        assert refused.value.status == 403, dest
    # even an element put into the sandbox set behind the daemon's back does not open it
    with inside(env.client.ns):
        Nft().add_elements("sandbox_v4", [BAD])
    assert env.tcp(BAD) != "ok"
    # past the log's rate limit (10/s, burst 20) known_bad still drops: no fall-through
    burst = env.lab.probe(env.client, BAD, PORT, count=30, timeout=0.1)
    assert "ok" not in burst and "refused" not in burst
    refusals = [e for e in env.daemon.audit_events() if e["event"] == "sandbox_refused"]
    assert len(refusals) >= 4


def test_changed_dns_answer_moves_the_allowed_address_without_a_reload(env: Env) -> None:
    before = env.daemon.ok("GET", "/v1/status")
    env.dns.answer(MOVED, ALLOWED6)
    until(lambda: env.tcp(MOVED) == "ok", 15, "the new address allowed")
    until(lambda: env.tcp(ALLOWED) == "refused", 15, "the old address gone after its grace")
    removed = before["egress_dns"]["removed"]
    # the counters follow right after the kernel transaction
    until(
        lambda: env.daemon.ok("GET", "/v1/status")["egress_dns"]["removed"] > removed,
        5,
        "the removal counted",
    )
    after = env.daemon.ok("GET", "/v1/status")
    assert after["generation"] == before["generation"]
    assert after["reloads"] == before["reloads"]
    assert after["egress_dns"]["added"] > before["egress_dns"]["added"]
    changed = [e for e in env.daemon.audit_events() if e["event"] == "egress_dns_changed"]
    assert any(MOVED in e["added"] for e in changed)
    # a resolver that stops answering never removes working entries
    env.dns.stop()
    time.sleep(0.1)
    until(
        lambda: env.daemon.ok("GET", "/v1/status")["egress_dns"]["failures"] > 0,
        20,
        "a failed resolution",
    )
    assert env.tcp(MOVED) == "ok"
    env.dns.start(MOVED, ALLOWED6)


def test_a_reload_that_changes_the_allowlist_moves_the_domain_sets(env: Env) -> None:
    env.dns.answer(MOVED, ALLOWED6, extra=SECOND)
    generation = env.daemon.ok("GET", "/v1/status")["generation"]
    env.daemon.policy.write_text(POLICY.replace(f"domains: [{NAME}]", f"domains: [{SECOND}]"))
    until(
        lambda: env.daemon.ok("GET", "/v1/status")["generation"] == generation + 1,
        10,
        "the hot reload",
    )
    until(lambda: env.tcp(OTHER) == "ok", 15, "the new name resolved and allowed")
    assert env.tcp(MOVED) == "refused"  # the dropped name's addresses left the set at once
    assert env.tcp(ALLOWED6) == "refused"
    env.daemon.policy.write_text(POLICY)
    until(lambda: env.tcp(ALLOWED6) == "ok", 15, "the original allowlist back")
    assert env.tcp(OTHER) == "refused"


def test_sandbox_role_can_grant_but_not_beyond_its_max_ttl(env: Env) -> None:
    ok = env.daemon.cli("sandbox", "add", KEPT, "--ttl", "2m", "--scope", "sb-n", user="nobody")
    assert ok.returncode == 0, ok.stderr
    long = env.daemon.cli("sandbox", "add", KEPT, "--ttl", "10m", user="nobody")
    assert long.returncode == 1 and "E-TTL-TOO-LONG" in long.stderr
    block = env.daemon.cli("block", "10.77.1.99", user="nobody")
    assert block.returncode == 1 and "E-FORBIDDEN" in block.stderr
    stranger = env.daemon.cli("sandbox", "add", KEPT, "--ttl", "1m", user="daemon")
    assert stranger.returncode == 1 and "E-FORBIDDEN" in stranger.stderr
    admin = env.sandbox().grant(KEPT, ttl="3h", scope="sandbox-root")
    assert admin["capped"] and admin["ttl"] == 3600  # root: capped at the policy's max_ttl
    listed = env.daemon.cli("sandbox", "list")
    assert KEPT in listed.stdout and "sandbox-root" in listed.stdout
    status = env.daemon.ok("GET", "/v1/status")
    assert status["elements"]["sandbox_v4"] >= 1 and status["sandbox"]["grants_v4"] >= 1
    assert "sandbox grants: v4" in env.daemon.cli("status").stdout


def test_grants_survive_a_restart_with_their_remaining_ttl(env: Env) -> None:
    env.sandbox().grant(KEPT, ttl="1h", scope="sandbox-keep")
    assert env.daemon.stop() == 0
    with inside(env.client.ns):
        Nft().delete_table()  # lose the kernel state: only the store remembers the grant
    env.daemon.start()
    until(lambda: env.tcp(ALLOWED6) == "ok", 15, "domains resolved again after the start")
    assert env.tcp(KEPT) == "ok"
    elem = next(e for e in env.elements("sandbox_v4") if isinstance(e, dict))
    assert elem["elem"]["val"] == KEPT and 3000 < elem["elem"]["expires"] <= 3600
    assert elem["elem"]["comment"] == "sandbox-keep"  # the scope, in the kernel element
    grants = {g["destination"]: g for g in env.sandbox().grants()}
    assert grants[KEPT]["scope"] == "sandbox-keep"


def test_a_deleted_table_is_repaired_with_grants_and_resolved_domains(env: Env) -> None:
    env.sandbox().grant(KEPT, ttl="30m", scope="sandbox-drift")
    with inside(env.client.ns):
        Nft().delete_table()
    # without the table nothing is filtered: wait for the repair to refuse again
    until(lambda: env.tcp(OTHER) == "refused", 15, "the output chain repaired")
    assert env.tcp(KEPT) == "ok"  # the grant restored in the same transaction
    assert env.tcp(ALLOWED6) == "ok"  # and the resolved domain


def test_flushed_sandbox_and_domain_sets_are_refilled(env: Env) -> None:
    env.sandbox().grant(KEPT, ttl="30m", scope="sandbox-drift")
    env.sandbox().grant("10.77.1.8/30", ports=[PORT], ttl="30m", scope="sandbox-drift")
    assert env.tcp(KEPT) == "ok" and env.tcp(OTHER) == "ok"
    flush = [
        {"flush": {"set": {"family": "inet", "table": "aitherfwd", "name": name}}}
        for name in ("sandbox_v4", "sandbox_port_v4", "egress_dom_v6")
    ]
    with inside(env.client.ns):
        Nft().run(flush)  # another tool empties our sets; the table itself is intact
    assert env.tcp(KEPT) == "refused" and env.tcp(OTHER) == "refused"
    until(lambda: env.tcp(KEPT) == "ok", 15, "the grant put back")
    assert env.tcp(OTHER) == "ok"  # the prefix . port grant too
    assert env.tcp(ALLOWED6) == "ok"  # and the resolved address
    env.sandbox().revoke("10.77.1.8/30")
    assert any(e["event"] == "drift_repaired" for e in env.daemon.audit_events())


def test_a_restart_without_dns_keeps_the_resolved_addresses(env: Env) -> None:
    assert env.tcp(ALLOWED6) == "ok"
    assert env.daemon.stop() == 0
    env.dns.stop()
    env.daemon.start()
    assert env.tcp(ALLOWED6) == "ok"
    status = env.daemon.ok("GET", "/v1/status")["egress_dns"]
    assert status["failing"] == 2 and status["addresses"] >= 3
    assert env.tcp(GIT6, OTHER_PORT) == "ok"  # the host-name rule's set kept too
    env.dns.start(MOVED, ALLOWED6)


def test_check_warns_about_names_that_do_not_resolve(env: Env, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace(f"domains: [{NAME}]", f"domains: [{NAME}, nowhere.test]"))
    res = env.lab.exec(env.client.ns, [AITHERFWD, "check", str(policy)], timeout=60)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stdout.splitlines() if "W-UNRESOLVED" in line]
    assert len(warned) == 1 and "nowhere.test" in warned[0]
    quiet = env.lab.exec(env.client.ns, [AITHERFWD, "check", "--no-resolve", str(policy)])
    assert "W-UNRESOLVED" not in quiet.stdout
