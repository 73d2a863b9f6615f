"""Zero-trust egress, in the real kernel: the eBPF programs of `vigie-egress` attached
to real cgroups, real processes in them, a real control plane delivering policies, the
real sidecar in the sidecar's cgroup and the official OpenAI SDK in the app's.

Root only (CI runs as root); fails loudly otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import socket
import subprocess
import sys
import time

import httpx
import pytest

from egress import EgressAgent, Node, Remote, require_root
from harness import ControlPlane, GrpcError, MockPool, Process, Sidecar, free_port, pool, wait_until
from otlp import OtlpReceiver

NS, POD = "shop", "chat-0"


@pytest.fixture
def world(tmp_path):
    """CP + policy, a node with one enrolled pod (sidecar + app), the agent, the real
    sidecar in its container's cgroup, a remote host, a local listener."""
    require_root()
    cleanups = []
    try:
        remote = Remote(1 + int(time.monotonic_ns() % 200))
        cleanups.append(remote.cleanup)
        remote.serve_tcp(8080)
        remote.serve_tcp(8080, remote.ip6)
        mock = MockPool("gpu", models=["mistral-7b"])
        cleanups.append(mock.stop)
        # A second pool, standing for an in-cluster vLLM Service apps might call directly.
        direct = MockPool("gpu-b", models=["mistral-7b"])
        cleanups.append(direct.stop)
        cp = ControlPlane()
        cleanups.append(cp.stop)
        admin = cp.token("alice", "admin")
        policy = {"name": "shop", "scope": {"namespace": NS},
                  "pools": [pool("gpu", [mock.url], [{"name": "mistral-7b"}]),
                            pool("gpu-b", [direct.url], [{"name": "mistral-7b"}])]}
        cp.call("PolicyService/ApplyPolicy", {"policy": policy}, token=admin)
        node = Node()
        cleanups.append(node.cleanup)
        pod = node.add_pod(NS, POD)
        # Another process listening on loopback, on a port the app must not reach.
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen(16)
        cleanups.append(other.close)
        sidecar_port, admin_port = free_port(), free_port()
        # An OTLP collector for the agent's security events.
        otlp = OtlpReceiver("grpc").start()
        cleanups.append(otlp.stop)
        agent = EgressAgent(node, cp, cp.token("egress", "agent"), dns=[remote.ip], sidecar_port=sidecar_port,
                            env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BLRP_SCHEDULE_DELAY": "50"})
        cleanups.append(agent.stop)
        sidecar = Sidecar(control_plane=cp, token=cp.token("shop-sidecar", "workload", namespace=NS),
                          identity={"namespace": NS, "pod": POD, "service_account": "default"},
                          ports=(sidecar_port, admin_port), cgroup=pod["containers"]["vigie-sidecar"],
                          extra_args=["--route-debug-header", "--egress-agent-url", agent.url],
                          )
        cleanups.append(sidecar.stop)
        yield {"otlp": otlp, "cp": cp, "admin": admin, "policy": policy, "node": node, "pod": pod, "agent": agent,
               "sidecar": sidecar, "mock": mock, "direct": direct, "remote": remote, "other_port": other.getsockname()[1]}
    finally:
        for c in reversed(cleanups):
            c()


# The cgroup programs attached while no redirect is in force (the LSM program is
# attached too where the kernel runs BPF LSM programs).
BASE_PROGRAMS = {"vigie_setsockopt", "vigie_connect4", "vigie_connect6", "vigie_sendmsg4", "vigie_sendmsg6",
                 "vigie_skb_egress"}


def app(w):
    return w["pod"]["containers"]["app"]


def side(w):
    return w["pod"]["containers"]["vigie-sidecar"]


def test_app_reaches_its_sidecar_and_dns_only(world):
    w, node, remote = world, world["node"], world["remote"]
    sc, mock = w["sidecar"], w["mock"]
    # Control: from outside the pod, everything here is reachable.
    assert node.probe(None, "tcp", "127.0.0.1", mock.port)["ok"]
    assert node.probe(None, "tcp", "127.0.0.1", w["other_port"])["ok"]
    assert node.probe(None, "tcp", remote.ip, 8080)["ok"]
    assert node.probe(None, "tcp", remote.ip6, 8080)["ok"]

    # The app's traffic goes through the sidecar: the OpenAI SDK, in the app's cgroup.
    chat = node.run(app(w), [sys.executable, "-c", (
        "from openai import OpenAI\n"
        f"c = OpenAI(base_url='{sc.base_url}/v1', api_key='unused', max_retries=0)\n"
        "r = c.chat.completions.create(model='mistral-7b', messages=[{'role':'user','content':'hi'}])\n"
        "print(r.choices[0].message.content)\n")], timeout=60)
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip()
    assert mock.stats()["requests_total"] >= 1

    deny = {"ok": False, "errno": "EPERM"}
    # Loopback: the sidecar port only, and only on 127.0.0.1 / ::1.
    assert node.probe(app(w), "tcp", "127.0.0.1", sc.port)["ok"]
    assert node.probe(app(w), "tcp", "127.0.0.1", mock.port) == deny, "direct to the pool"
    assert node.probe(app(w), "tcp", "127.0.0.1", w["other_port"]) == deny
    assert node.probe(app(w), "tcp", "127.0.0.2", sc.port) == deny
    # IPv6: allowed on ::1 (nothing listens there: refused, not denied), denied elsewhere.
    assert node.probe(app(w), "tcp", "::1", sc.port) == {"ok": False, "errno": "ECONNREFUSED"}
    assert node.probe(app(w), "tcp", "::1", w["other_port"]) == deny
    # v4-mapped IPv6 meets the IPv4 rules.
    assert node.probe(app(w), "tcp", "::ffff:127.0.0.1", sc.port)["ok"]
    assert node.probe(app(w), "tcp", "::ffff:127.0.0.1", mock.port) == deny
    assert node.probe(app(w), "tcp", f"::ffff:{remote.ip}", 8080) == deny
    # The outside world.
    assert node.probe(app(w), "tcp", remote.ip, 8080) == deny
    assert node.probe(app(w), "tcp", remote.ip6, 8080) == deny
    # UDP: DNS to the resolver only.
    assert node.probe(app(w), "udp", remote.ip, 53)["ok"]
    assert node.probe(app(w), "udp", remote.ip, 5353) == deny
    assert node.probe(app(w), "udp", remote.local_ip, 53) == deny
    # ICMP (no socket hook sees it): dropped by the cgroup_skb backstop.
    assert node.probe(None, "ping", remote.ip)["ok"]
    assert not node.probe(app(w), "ping", remote.ip)["ok"]

    # The sidecar reaches its pool and the control plane, nothing else.
    assert node.probe(side(w), "tcp", "127.0.0.1", mock.port)["ok"]
    assert node.probe(side(w), "tcp", "127.0.0.1", w["cp"].port)["ok"]
    assert node.probe(side(w), "tcp", remote.ip, 8080) == deny
    assert node.probe(side(w), "tcp", "127.0.0.1", w["other_port"]) == deny
    assert sc.ready(), "the sidecar still serves (its control-plane stream is allowed)"

    # Every denial is an event with who, what and where.
    agent = w["agent"]
    events = wait_until(lambda: [e for e in agent.events() if e["port"] == 8080 and e["protocol"] == "tcp"
                                 and e["destination"] == remote.ip and e["hook"] == "connect4"],
                        what="egress.denied event for the remote host")
    ev = events[0]
    assert (ev["namespace"], ev["pod"], ev["container"]) == (NS, POD, "app")
    assert ev["role"] == "app"
    assert ev["command"].startswith("python")
    assert ev["pid"] > 0
    all_events = wait_until(lambda: agent.events() if len(agent.events()) >= 13 else None, what="13 events")
    assert len(all_events) == 13, "one event per refused attempt"
    by = {(e["destination"], e["port"], e["protocol"], e["hook"]) for e in all_events}
    assert (remote.ip6, 8080, "tcp", "connect6") in by
    assert (remote.ip, 5353, "udp", "sendmsg4") in by
    assert (remote.ip, 0, "icmp", "skb_egress") in by
    assert ("127.0.0.1", mock.port, "tcp", "connect6") in by, "v4-mapped destination shown as IPv4"
    assert any(e["role"] == "sidecar" and e["container"] == "vigie-sidecar" for e in all_events)
    # The same events over OTLP, as documented in docs/security-events.md.
    records = w["otlp"].wait_for(
        lambda r: [x for x in r.logs() if x["event_name"] == "vigie.egress.denied"] if len(
            [x for x in r.logs() if x["event_name"] == "vigie.egress.denied"]) >= 13 else None,
        what="13 egress.denied log records")
    assert len(records) == 13
    exported = {(x["attributes"]["destination.address"], x["attributes"]["destination.port"],
                 x["attributes"]["network.transport"], x["attributes"]["vigie.egress.hook"]) for x in records}
    assert exported == by
    rec = next(x for x in records if x["attributes"]["destination.address"] == remote.ip
               and x["attributes"]["vigie.egress.hook"] == "connect4")
    assert rec["severity_text"] == "WARN" and rec["resource"]["service.name"] == "vigie-egress-agent"
    assert rec["resource"]["k8s.node.name"] == "n1"
    a = rec["attributes"]
    assert (a["k8s.namespace.name"], a["k8s.pod.name"], a["k8s.container.name"], a["vigie.egress.role"]) \
        == (NS, POD, "app", "app")
    assert a["process.command"].startswith("python") and a["process.pid"] > 0
    assert a["vigie.event.category"] == "network" and a["vigie.event.outcome"] == "failure"
    # The control plane has them too, aggregated, for the SOC (grpcurl).
    def reported():
        rows = w["cp"].call("EgressService/ListDenials", {"namespace": NS}, token=w["admin"]).get("denials", [])
        return rows if len(rows) >= 13 else None
    rows = wait_until(reported, timeout=15, what="denials reported to the control plane")
    mine = [r for r in rows if r["destination"] == remote.ip and r.get("port") == 8080 and r["hook"] == "connect4"
            and r.get("container") == "app"]
    assert mine and mine[0]["node"] == "n1" and int(mine[0]["count"]) == 1 and mine[0]["role"] == "app"
    assert mine[0]["protocol"] == "tcp" and mine[0]["command"].startswith("python")
    assert sum(int(r["count"]) for r in rows) == 13
    auditor = w["cp"].token("soc", "auditor")
    assert w["cp"].call("EgressService/ListDenials", {"namespace": NS, "limit": 2}, token=auditor)["denials"]
    with pytest.raises(GrpcError) as e:
        w["cp"].call("EgressService/ListDenials", {}, token=w["cp"].token("x", "workload", namespace=NS))
    assert e.value.code == "PermissionDenied"
    metrics = agent.metrics()
    assert f'vigie_egress_denials_total{{container="app",namespace="{NS}",pod="{POD}",protocol="tcp"}}' in metrics
    assert "vigie_egress_enrolled_cgroups 2" in metrics
    assert "vigie_egress_events_lost 0" in metrics
    assert "vigie_egress_denials_reported_total 13" in metrics


def test_denial_reports_are_validated(control_planes):
    cp = control_planes()
    agent = cp.token("egress", "agent")
    good = {"node": "n1", "namespace": NS, "pod": POD, "destination": "10.1.2.3", "port": 443,
            "protocol": "tcp", "hook": "connect4", "count": "3"}
    assert cp.call("EgressService/ReportDenials", {"denials": [good]}, token=agent)["accepted"] == 1
    for field, value, reason in [("destination", "example.com", "must be an IP address"),
                                 ("port", 70000, "must be at most 65535"), ("count", "0", "must be at least 1"),
                                 ("node", "", "must not be empty")]:
        with pytest.raises(GrpcError) as e:
            cp.call("EgressService/ReportDenials", {"denials": [good, {**good, field: value}]}, token=agent)
        assert e.value.code == "InvalidArgument"
        assert f"denials[1].{field}: {reason}" in e.value.text, e.value.text
    with pytest.raises(GrpcError) as e:
        cp.call("EgressService/ReportDenials", {"denials": [good]}, token=cp.token("w", "workload", namespace=NS))
    assert e.value.code == "PermissionDenied"


def denial_with(agent, **fields):
    """The agent's egress.denied events carrying all of `fields`."""
    return [e for e in agent.events() if all(e.get(k) == v for k, v in fields.items())]


def test_source_routed_packets_are_refused_whatever_their_first_hop(world):
    """connect() to an allowed address (the sidecar) with an IPv4 loose source route
    through the remote host, or a record-route option: packets with IP options are
    refused from enrolled pods, first hop allowed or not (issue 21, item 3)."""
    w, node, remote = world, world["node"], world["remote"]
    sc_port = w["sidecar"].port
    # Control: outside pods, options pass (to a listener outside pods too: an enrolled
    # listener's reply would echo the options, and its replies are refused as well).
    assert node.probe(None, "rr", "127.0.0.1", w["other_port"])["ok"], "control: outside the pod, options pass"
    r = node.probe(app(w), "lsrr", "127.0.0.1", sc_port, remote.ip)
    assert not r["ok"], r
    wait_until(lambda: denial_with(w["agent"], hook="skb_egress", reason="ip_options", destination=remote.ip,
                                   role="app"), what="source-routed SYN refused by the backstop")
    assert not node.probe(app(w), "rr", "127.0.0.1", sc_port)["ok"]
    wait_until(lambda: denial_with(w["agent"], hook="skb_egress", reason="ip_options", destination="127.0.0.1"),
               what="record-route SYN to the sidecar refused")
    # Without options, the same connect works.
    assert node.probe(app(w), "tcp", "127.0.0.1", sc_port)["ok"]


def test_ipv6_routing_headers_lone_fragments_and_bound_loopback_are_refused(world):
    """An IPv6 segment-routing header (settable without privileges), a lone IPv4
    fragment from a raw socket to the allowed DNS resolver, and a connect to the
    sidecar's loopback port from a socket bound to the pod's outer device: each is
    refused and reported with its reason (issue 21, items 3–5)."""
    w, node, remote = world, world["node"], world["remote"]
    sc_port, agent = w["sidecar"].port, world["agent"]
    # Controls: outside the pod each of these goes out (the segment-routed SYN is then
    # dropped by the receiving stack, which has segment routing off: a timeout, no event).
    assert node.probe(None, "srh", "::1", sc_port)["errno"] == "TimeoutError"
    assert not denial_with(agent, reason="routing_header")
    assert node.probe(None, "fragment", remote.ip)["ok"]
    assert node.probe(None, "bound", "127.0.0.1", sc_port, remote.host_if) != {"ok": False, "errno": "EPERM"}

    r = node.probe(app(w), "srh", "::1", sc_port)
    assert not r["ok"], r
    wait_until(lambda: denial_with(agent, hook="skb_egress", reason="routing_header", destination="::1"),
               what="segment-routed SYN refused")
    # Plain ::1 is allowed (nothing listens there: refused by the stack, not by us).
    assert node.probe(app(w), "tcp", "::1", sc_port) == {"ok": False, "errno": "ECONNREFUSED"}

    # UDP to the resolver on port 53 is allowed; a fragment after the first is not.
    assert node.probe(app(w), "udp", remote.ip, 53)["ok"]
    assert node.probe(app(w), "fragment", remote.ip) == {"ok": False, "errno": "EPERM"}
    wait_until(lambda: denial_with(agent, hook="skb_egress", reason="fragment", destination=remote.ip,
                                   protocol="udp"), what="lone fragment refused")

    assert node.probe(app(w), "bound", "127.0.0.1", sc_port, remote.host_if) == {"ok": False, "errno": "EPERM"}
    wait_until(lambda: denial_with(agent, hook="connect4", reason="loopback_off_device", destination="127.0.0.1",
                                   port=sc_port), what="loopback connect bound to another device refused")
    # The same socket bound to lo may reach the sidecar.
    assert node.probe(app(w), "bound", "127.0.0.1", sc_port, "lo")["ok"]
    # The control plane lists them with their reasons.
    def reported():
        rows = w["cp"].call("EgressService/ListDenials", {"namespace": NS}, token=w["admin"]).get("denials", [])
        reasons = {r.get("reason") for r in rows}
        return rows if {"routing_header", "fragment", "loopback_off_device"} <= reasons else None
    wait_until(reported, timeout=15, what="denials with reasons at the control plane")


def metric(agent, name: str) -> float | None:
    """The value of an unlabelled metric, None when absent."""
    for line in agent.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def test_packet_sockets_cannot_send_frames_from_enrolled_pods(world):
    """A pod holding CAP_NET_RAW (root here, on purpose) writes a whole Ethernet frame
    with an AF_PACKET socket, below every IP hook: the frame never reaches the remote
    host, and the refusal is an event. Where the kernel runs BPF LSM programs the
    socket itself is refused; elsewhere (this CI's kernel) the tc backstop on the pod's
    devices drops the frame, and the options that would send it past tc (packet
    `PACKET_QDISC_BYPASS`, any AF_XDP set-up) are refused (issue 21, item 1)."""
    w, node, remote = world, world["node"], world["remote"]
    agent = w["agent"]
    listener = remote.serve_udp(9999)
    frame = ("frame", remote.ip, 9999, remote.host_if, remote.peer_mac())
    # Control: the same frame from outside the pod reaches the remote host.
    assert node.probe(None, *frame, "outside-frame", remote.local_ip)["ok"]
    wait_until(lambda: "outside-frame" in listener.log(), what="control frame received")
    assert node.probe(None, *frame, "outside-bypass", remote.local_ip, "bypass")["ok"]
    wait_until(lambda: "outside-bypass" in listener.log(), what="control frame sent past the qdisc layer")
    wait_until(lambda: (metric(agent, "vigie_egress_guarded_devices") or 0) >= 1, what="tc backstop attached")

    lsm = metric(agent, "vigie_egress_socket_family_guard")
    assert lsm in (0, 1)
    r = node.probe(app(w), *frame, "inside-frame", remote.local_ip)
    assert not r["ok"], r
    if lsm == 1:
        assert r["errno"] == "EPERM", r
        ev = wait_until(lambda: denial_with(agent, hook="socket_create", reason="socket_family", protocol="packet"),
                        what="packet socket refused")[0]
        assert ev["command"].startswith("python") and ev["pid"] > 0
    else:
        ev = wait_until(lambda: denial_with(agent, hook="tc_egress", reason="socket_family", protocol="packet"),
                        what="packet frame dropped by the tc backstop")[0]
    assert (ev["namespace"], ev["pod"], ev["container"], ev["role"]) == (NS, POD, "app", "app")
    r = node.probe(app(w), *frame, "inside-bypass", remote.local_ip, "bypass")
    assert r == {"ok": False, "errno": "EPERM"}, r
    if lsm != 1:
        ev = wait_until(lambda: denial_with(agent, hook="setsockopt", reason="socket_option",
                                            protocol="packet_qdisc_bypass"), what="qdisc bypass refused")[0]
        assert ev["command"].startswith("python") and ev["pid"] > 0
        assert node.probe(app(w), "xdp", "0.0.0.0", 0) == {"ok": False, "errno": "EPERM"}
        wait_until(lambda: denial_with(agent, hook="setsockopt", protocol="xdp"), what="AF_XDP set-up refused")
    # Ordinary sockets still work in the pod, and outside it frames still go.
    assert node.probe(app(w), "tcp", "127.0.0.1", w["sidecar"].port)["ok"]
    assert node.probe(None, *frame, "outside-again", remote.local_ip)["ok"]
    wait_until(lambda: "outside-again" in listener.log(), what="frames from outside pods still pass")
    assert "inside-frame" not in listener.log() and "inside-bypass" not in listener.log()


def test_pods_holding_raw_capabilities_packet_sockets_or_flags_are_reported(world):
    """What no packet shows: an app process holding CAP_NET_RAW and an open packet
    socket, and a pod the webhook flagged as not enforceable (it keeps NET_RAW). The
    agent's scan of /proc reports each once as a security event and as a metric
    (issue 21, capabilities)."""
    w, node = world, world["node"]
    agent = w["agent"]
    flagged = node.add_pod(NS, "raw-0", write=False)
    node.pods[-1]["metadata"]["annotations"] = {"vigie.io/egress-enforceable": "false",
                                                "vigie.io/egress-not-enforceable-reason": "keeps NET_RAW"}
    node.write_pods()
    lsm = metric(agent, "vigie_egress_socket_family_guard")
    holder = Process([sys.executable, "-c",
                      "import socket,time\n"
                      "try:\n s=socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nexcept OSError:\n pass\n"
                      "print('up',flush=True)\ntime.sleep(120)\n"], cgroup=app(w))
    try:
        assert holder.proc.stdout.readline().strip() == b"up"

        def risks():
            found = set()
            for line in agent.metrics().splitlines():
                if line.startswith("vigie_egress_pod_risks{") and line.endswith(" 1"):
                    labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
                    found.add((labels["pod"].strip('"'), labels["container"].strip('"'), labels["risk"].strip('"')))
            return found
        wanted = {(POD, "app", "cap_net_raw"), ("raw-0", "", "not_enforceable")}
        if lsm != 1:
            wanted.add((POD, "app", "packet_socket"))
        wait_until(lambda: wanted <= risks(), timeout=30, what="risks found by the scan")
        assert flagged["uid"]
        events = [json.loads(x)["fields"] for x in agent.process.log().splitlines()
                  if '"egress.pod.degraded"' in x]
        reported = {(e["pod"], e["container"], e["risk"]) for e in events}
        assert wanted <= reported, reported
        assert len(events) == len(reported), "each finding reported once"
    finally:
        holder.stop()
    # Once the process is gone, so are its findings (the flag stays while the pod does).
    wait_until(lambda: (POD, "app", "cap_net_raw") not in risks(), timeout=30, what="findings cleared")


# Takes every descriptor it can from process argv[1] with pidfd_getfd (what an app
# sharing the sidecar's process namespace and uid can try).
STEAL = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
pidfd = os.pidfd_open(int(sys.argv[1]))
stolen, errnos = [], set()
for fd in range(3, 64):
    r = libc.syscall(438, pidfd, fd, 0)  # pidfd_getfd
    if r >= 0:
        stolen.append(fd)
        os.close(r)
    else:
        errnos.add(ctypes.get_errno())
print(json.dumps({"stolen": stolen, "errnos": sorted(errnos)}))
"""


def test_no_process_can_take_the_sidecars_sockets():
    """A connected socket carries its connector's rights: a process that takes the
    sidecar's pool connection with pidfd_getfd sends straight to the pool. The sidecar
    marks itself not dumpable, so a process of the same uid without CAP_SYS_PTRACE
    cannot take its descriptors; a control process of the same uid can be robbed
    (issue 21, item 2; the webhook refuses the uid and namespace sharing that set it up)."""
    import errno as errno_mod
    # Every process here runs as root with every capability dropped, as the sidecar
    # (capabilities: drop ALL) and the app do in a pod: same uid, no CAP_SYS_PTRACE.
    no_caps = ["setpriv", "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs"]
    mock = MockPool("gpu", models=["mistral-7b"])
    sc = Sidecar(policy={"name": "p", "pools": [pool("gpu", [mock.url], [{"name": "mistral-7b"}])]}, wrapper=no_caps)
    victim = Process([*no_caps, sys.executable, "-c", "import socket,time\n"
                      f"s=socket.create_connection(('127.0.0.1',{mock.port}))\nprint('up',flush=True)\n"
                      "time.sleep(60)\n"])
    try:
        assert victim.proc.stdout.readline().strip() == b"up"
        httpx.post(f"{sc.base_url}/v1/chat/completions", json={
            "model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]}, timeout=10).raise_for_status()
        thief = [*no_caps, sys.executable, "-c", STEAL]

        def steal(pid):
            out = subprocess.run([*thief, str(pid)], capture_output=True, text=True, timeout=20)
            assert out.returncode == 0, out.stderr
            return json.loads(out.stdout)
        assert steal(victim.proc.pid)["stolen"], "control: the same attack works on a dumpable process"
        r = steal(sc.process.proc.pid)
        assert r == {"stolen": [], "errnos": [errno_mod.EPERM]}, r
    finally:
        victim.stop()
        sc.stop()
        mock.stop()


def test_raw_tcp_segments_are_judged_whatever_their_flags(world):
    """A raw socket's TCP segment that is not a bare SYN (PSH|ACK with a payload) is
    judged by its destination like any packet that starts something; only a TCP stream
    socket's non-SYN segments belong to an exchange already judged (red-team finding)."""
    w, node, remote = world, world["node"], world["remote"]
    assert node.probe(None, "rawtcp", remote.ip, 8080)["ok"], "control: outside the pod it goes"
    assert node.probe(app(w), "rawtcp", remote.ip, 8080) == {"ok": False, "errno": "EPERM"}
    assert node.probe(app(w), "rawtcp", remote.ip6, 8080) == {"ok": False, "errno": "EPERM"}
    wait_until(lambda: denial_with(w["agent"], hook="skb_egress", reason="destination", destination=remote.ip,
                                   port=8080, protocol="tcp"), what="raw PSH|ACK refused")


def test_frames_written_to_loopback_or_from_a_new_namespace_are_still_dropped(world):
    """With forwarding on, a frame written to `lo` is routed out: the tc backstop guards
    loopback too. A process that makes a network namespace of its own does not move the
    backstop off its pod's devices (the agent guards every namespace the pod's processes
    are in) and is reported (red-team findings)."""
    w, node, remote = world, world["node"], world["remote"]
    agent = w["agent"]
    listener = remote.serve_udp(9998)
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    saved = forward.read_text()
    forward.write_text("1")
    try:
        lo_frame = ("frame", remote.ip, 9998, "lo", "00:00:00:00:00:00")
        assert node.probe(None, *lo_frame, "outside-lo", "10.231.250.7")["ok"]
        wait_until(lambda: "outside-lo" in listener.log(), what="control: a frame on lo is forwarded out")
        r = node.probe(app(w), *lo_frame, "inside-lo", "10.231.250.7")
        assert not r["ok"], r
        wait_until(lambda: denial_with(agent, hook="tc_egress", protocol="packet"), what="frame on lo dropped")
    finally:
        forward.write_text(saved)
    guarded = metric(agent, "vigie_egress_guarded_devices")
    other = Process(["unshare", "--net", "sleep", "60"], cgroup=app(w))
    try:
        wait_until(lambda: (metric(agent, "vigie_egress_guarded_devices") or 0) > guarded,
                   what="the new namespace guarded too")
        frame = ("frame", remote.ip, 9998, remote.host_if, remote.peer_mac())
        assert not node.probe(app(w), *frame, "inside-after-unshare", remote.local_ip)["ok"]
        wait_until(lambda: any('"several_network_namespaces"' in x and f'"{POD}"' in x
                               for x in agent.process.log().splitlines()), timeout=30,
                   what="a pod spanning two namespaces reported")
    finally:
        other.stop()
    time.sleep(0.5)
    assert "inside-lo" not in listener.log() and "inside-after-unshare" not in listener.log()


def test_an_enrolment_deleted_from_the_pinned_map_comes_back(world):
    """Whoever can write the pins (a root process with a host path on /sys/fs/bpf,
    which the webhook refuses unless annotated) can delete a pod's enrolment; the agent
    checks the maps against its plan every 10 s and puts it back (red-team finding)."""
    w, node, remote = world, world["node"], world["remote"]
    assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
    pod_id = os.stat(w["pod"]["dir"]).st_ino
    key = [f"0x{b:02x}" for b in pod_id.to_bytes(8, "little")]
    subprocess.run(["bpftool", "map", "delete", "pinned", str(node.pin_dir / "VIGIE_ENROLLED"), "key", *key],
                   check=True, capture_output=True)
    assert node.probe(app(w), "tcp", remote.ip, 8080)["ok"], "control: the deletion unenrolled the pod"
    t0 = time.monotonic()
    wait_until(lambda: node.probe(app(w), "tcp", remote.ip, 8080).get("errno") == "EPERM", timeout=20,
               what="enrolment restored")
    assert time.monotonic() - t0 < 15


def test_a_flooding_pod_does_not_hide_another_pods_denials(world):
    """One pod floods denied sends; each enrolled cgroup has its own event budget in
    the kernel, so a quiet pod's single denial still reaches the agent, and what the
    flooding pod lost is counted against it (issue 21, event fairness)."""
    w, node, remote = world, world["node"], world["remote"]
    agent = w["agent"]
    quiet = node.add_pod(NS, "quiet-0")
    wait_until(lambda: node.probe(quiet["containers"]["app"], "tcp", remote.ip, 8080)["errno"] == "EPERM",
               what="quiet pod enrolled")
    flood = ("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nn=0\nend=time.time()+4\n"
             "while time.time()<end:\n try: s.sendto(b'x',('%s',5353))\n except OSError: n+=1\nprint(n)\n" % remote.ip)
    floods = [subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(app(w)),
                                sys.executable, "-c", flood], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        time.sleep(1.5)
        assert node.probe(quiet["containers"]["app"], "tcp", remote.ip, 4242)["errno"] == "EPERM"
    finally:
        sent = sum(int(p.communicate(timeout=30)[0].strip() or 0) for p in floods)
    assert sent > 50_000, f"the flood sent only {sent} denied datagrams"
    wait_until(lambda: denial_with(agent, pod="quiet-0", port=4242, hook="connect4"),
               what="the quiet pod's denial, during the flood")

    def dropped():
        m = agent.metrics()
        line = next((x for x in m.splitlines() if x.startswith("vigie_egress_pod_events_dropped{")
                     and f'pod="{POD}"' in x and 'reason="rate_limit"' in x), None)
        return int(float(line.rsplit(" ", 1)[1])) if line else None
    lost = wait_until(dropped, what="the flooding pod's dropped events counted")
    assert lost > sent // 2, (lost, sent)
    metrics = agent.metrics()
    assert not any(x.startswith("vigie_egress_pod_events_dropped{") and 'pod="quiet-0"' in x
                   for x in metrics.splitlines()), "nothing of the quiet pod was dropped"


def test_an_empty_pod_list_does_not_unenrol_the_node_at_once(world):
    """A lister that writes an empty (valid) pod list does not unenrol every pod: the
    agent keeps the last list until the empty one has held for 10 s (issue 21,
    enrolment safety)."""
    w, node, remote = world, world["node"], world["remote"]
    assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
    saved = node.pods
    node.pods = []
    node.write_pods()
    t0 = time.monotonic()
    wait_until(lambda: "vigie_egress_empty_pod_list_held 1" in w["agent"].metrics(), what="empty list held")
    for _ in range(3):
        assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM", "still enforced"
        time.sleep(1)
    # A non-empty list again: nothing ever left the maps.
    node.pods = saved
    node.write_pods()
    wait_until(lambda: "vigie_egress_empty_pod_list_held 0" in w["agent"].metrics(), what="list believed again")
    # Empty for good: believed once it has held.
    node.pods = []
    node.write_pods()
    t1 = time.monotonic()
    wait_until(lambda: node.probe(app(w), "tcp", remote.ip, 8080)["ok"], timeout=30, what="unenrolled at last")
    assert time.monotonic() - t1 >= 9, "unenrolled before the confirmation window"
    assert time.monotonic() - t0 > 10


def test_policy_update_applies_on_the_next_connect(world):
    w, node, remote = world, world["node"], world["remote"]
    assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
    policy = {**w["policy"], "egress": {
        "allow": [{"cidr": f"{remote.ip}/32", "ports": "8000-8100", "description": "partner API"}],
        "sidecarAllow": [{"cidr": remote.ip6, "ports": "8080"}],
    }}
    w["cp"].call("PolicyService/ApplyPolicy", {"policy": policy}, token=w["admin"])
    wait_until(lambda: node.probe(app(w), "tcp", remote.ip, 8080)["ok"], timeout=10, what="allow applied")
    assert node.probe(app(w), "tcp", remote.ip, 9000)["errno"] == "EPERM", "outside the port range"
    assert node.probe(side(w), "tcp", remote.ip, 8080)["errno"] == "EPERM", "app rules are not the sidecar's"
    assert node.probe(side(w), "tcp", remote.ip6, 8080)["ok"]
    # The agent ACKed the bundle.
    clients = w["cp"].call("StatusService/ListClients", {}, token=w["admin"])["clients"]
    agent_status = next(c for c in clients if c["clientId"] == "node/n1")
    assert agent_status.get("ackedVersion", "").startswith("bundle-")
    # Back to the default.
    w["cp"].call("PolicyService/ApplyPolicy", {"policy": w["policy"]}, token=w["admin"])
    wait_until(lambda: node.probe(app(w), "tcp", remote.ip, 8080).get("errno") == "EPERM", timeout=10,
               what="allow withdrawn")


CHAT_WITH_ROUTE = (
    "import sys\n"
    "from openai import OpenAI\n"
    "c = OpenAI(base_url=sys.argv[1], api_key='unused', max_retries=0)\n"
    "r = c.chat.completions.with_raw_response.create(model='mistral-7b', "
    "messages=[{'role': 'user', 'content': 'hi'}])\n"
    "print(r.headers.get('x-vigie-route', ''))\n"
    "print(r.parse().choices[0].message.content)\n"
)


def test_redirect_sends_direct_calls_through_the_sidecar(world):
    w, node = world, world["node"]
    direct, mock, agent = w["direct"], w["mock"], w["agent"]
    # Without a redirect rule the app cannot call the pool directly.
    assert node.probe(app(w), "tcp", "127.0.0.1", direct.port)["errno"] == "EPERM"
    policy = {**w["policy"], "egress": {"redirect": [{"cidr": "127.0.0.1", "ports": str(direct.port),
                                                      "description": "vLLM Service called directly"}]}}
    w["cp"].call("PolicyService/ApplyPolicy", {"policy": policy}, token=w["admin"])
    wait_until(lambda: node.probe(app(w), "tcp", "127.0.0.1", direct.port)["ok"], timeout=10,
               what="redirect applied")
    before = (direct.stats()["requests_total"], mock.stats()["requests_total"])
    # The app believes it calls the vLLM Service; the kernel hands the connection to
    # the sidecar, which learns where it was going and routes to that pool.
    out = node.run(app(w), [sys.executable, "-c", CHAT_WITH_ROUTE, f"http://127.0.0.1:{direct.port}/v1"],
                   timeout=60)
    assert out.returncode == 0, out.stderr
    route, content = out.stdout.splitlines()[:2]
    assert "pool=gpu-b" in route and f"original=127.0.0.1:{direct.port}" in route, route
    assert content
    assert direct.stats()["requests_total"] == before[0] + 1
    assert mock.stats()["requests_total"] == before[1]
    # Through the sidecar's own address, the usual order (pool gpu first), no original.
    out = node.run(app(w), [sys.executable, "-c", CHAT_WITH_ROUTE, f"{w['sidecar'].base_url}/v1"], timeout=60)
    assert out.returncode == 0, out.stderr
    route = out.stdout.splitlines()[0]
    assert "pool=gpu;" in route and "original=" not in route, route
    # Only app containers are redirected: the sidecar reaches the pool itself.
    assert node.probe(side(w), "tcp", "127.0.0.1", direct.port)["ok"]
    metrics = agent.metrics()
    redirected = [l for l in metrics.splitlines() if l.startswith("vigie_egress_redirected_connections ")]
    assert redirected and int(float(redirected[0].split()[1])) >= 2, redirected
    denied = [e for e in agent.events() if e["port"] == direct.port and e["role"] == "app"
              and e["destination"] == "127.0.0.1"]
    assert len(denied) == 1, "only the try before the redirect rule was refused"
    # sock_ops runs only while some policy redirects.
    def programs():
        out = subprocess.run(["bpftool", "cgroup", "show", str(node.root)], capture_output=True, text=True).stdout
        return {line.split()[-1] for line in out.splitlines()[1:] if line.strip()}
    assert "vigie_sock_ops" in programs()
    w["cp"].call("PolicyService/ApplyPolicy", {"policy": w["policy"]}, token=w["admin"])
    wait_until(lambda: "vigie_sock_ops" not in programs(), timeout=10, what="sock_ops detached")
    assert programs() - {"vigie_socket_create"} == BASE_PROGRAMS
    # …and comes back with the next redirect rule (the same agent attaches it again).
    w["cp"].call("PolicyService/ApplyPolicy", {"policy": policy}, token=w["admin"])
    wait_until(lambda: "vigie_sock_ops" in programs(), timeout=10, what="sock_ops attached again")
    out = node.run(app(w), [sys.executable, "-c", CHAT_WITH_ROUTE, f"http://127.0.0.1:{direct.port}/v1"],
                   timeout=60)
    assert out.returncode == 0 and f"original=127.0.0.1:{direct.port}" in out.stdout, out.stdout + out.stderr
    # A request that comes back to a sidecar (a redirect loop) is refused, not re-sent.
    r = httpx.post(f"{w['sidecar'].base_url}/v1/chat/completions", headers={"via": "1.1 vigie-sidecar"},
                   json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 508 and r.json()["error"]["code"] == "loop_detected", r.text
    # The lookup answers only for redirected connections.
    r = httpx.get(f"{agent.url}/v1/original-destination", params={"netns": 1, "peer": "127.0.0.1:1"})
    assert r.status_code == 404
    assert httpx.get(f"{agent.url}/v1/original-destination", params={"peer": "x"}).status_code == 400


def test_agent_restart_never_opens_a_window(world):
    w, node, remote = world, world["node"], world["remote"]
    agent = w["agent"]
    assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
    before = subprocess.run(["bpftool", "cgroup", "show", str(node.root)], capture_output=True, text=True).stdout
    agent.stop()  # SIGKILL: no chance to clean up
    # Agent gone: still enforced, still allowed where it should be.
    for _ in range(5):
        assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
        assert node.probe(app(w), "tcp", "127.0.0.1", w["sidecar"].port)["ok"]
    # A pod created while the agent is away is enrolled when it is back.
    late = node.add_pod(NS, "chat-1")
    agent.start(wait=False)
    # Connects attempted during the restart are refused, every one of them.
    deadline = time.monotonic() + 30
    while not agent.ready():
        assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
        assert node.probe(app(w), "tcp", "127.0.0.1", w["sidecar"].port)["ok"], "allowed traffic flows throughout"
        assert time.monotonic() < deadline, agent.process.log()
    assert node.probe(app(w), "tcp", remote.ip, 8080)["errno"] == "EPERM"
    wait_until(lambda: node.probe(late["containers"]["app"], "tcp", remote.ip, 8080).get("errno") == "EPERM",
               timeout=10, what="late pod enrolled")
    after = subprocess.run(["bpftool", "cgroup", "show", str(node.root)], capture_output=True, text=True).stdout
    names = [line.split()[-1] for line in after.splitlines()[1:] if line.strip()]
    assert sorted(names) == sorted(line.split()[-1] for line in before.splitlines()[1:] if line.strip())
    assert set(names) - {"vigie_socket_create"} == BASE_PROGRAMS, after  # no redirect: no sock_ops
    assert len(names) == len(set(names)), "each program attached once after the restart"
    assert "adopted=true" in agent.process.log() or '"adopted":true' in agent.process.log()


def test_pods_come_and_go_with_either_cgroup_layout(world):
    w, node, remote = world, world["node"], world["remote"]
    fs_pod = node.add_pod(NS, "batch-0", layout="cgroupfs")
    free_pod = node.add_pod(NS, "legacy-0", enrolled=False)
    wait_until(lambda: node.probe(fs_pod["containers"]["app"], "tcp", remote.ip, 8080).get("errno") == "EPERM",
               timeout=10, what="cgroupfs pod enrolled")
    wait_until(lambda: 'pod="batch-0"' in w["agent"].metrics(), timeout=10, what="batch-0 denial counted")
    assert node.probe(free_pod["containers"]["app"], "tcp", remote.ip, 8080)["ok"], "not enrolled: untouched"
    # The pod leaves the node: its cgroup is no longer enforced.
    node.pods = [p for p in node.pods if p["metadata"]["name"] != "batch-0"]
    node.write_pods()
    wait_until(lambda: node.probe(fs_pod["containers"]["app"], "tcp", remote.ip, 8080)["ok"], timeout=10,
               what="pod removed")
    # Its denial series leave the agent's metrics with it.
    assert wait_until(lambda: 'pod="batch-0"' not in w["agent"].metrics(), timeout=10, what="series dropped")


def sidecar_readyz(sc):
    """The sidecar's /readyz answer, None while its admin port is not up."""
    try:
        return httpx.get(f"{sc.admin_url}/readyz", timeout=1)
    except httpx.TransportError:
        return None


def test_sidecar_is_not_ready_before_its_pod_is_enforced(world):
    """With --egress-required a native sidecar holds the app containers back until the
    agent has enrolled the pod: the app never runs unenforced."""
    w, node = world, world["node"]
    late = node.add_pod(NS, "chat-2", enrolled=False)
    policy = {"name": "local", "pools": [pool("gpu", [w["mock"].url], [{"name": "mistral-7b"}])]}
    sc = Sidecar(policy=policy, extra_args=["--egress-required"], cgroup=late["containers"]["vigie-sidecar"],
                 wait_ready=False)
    try:
        readyz = lambda: sidecar_readyz(sc)  # noqa: E731
        r = wait_until(readyz, what="sidecar admin up")
        time.sleep(1.5)
        r = readyz()
        assert r.status_code == 503 and "egress enforcement not in place" in r.text, r.text
        # The pod gets its label (as the webhook sets it at creation): enrolled, ready.
        for p in node.pods:
            if p["metadata"]["name"] == "chat-2":
                p["metadata"]["labels"]["vigie.io/egress"] = "enforced"
        node.write_pods()
        wait_until(lambda: readyz().status_code == 200, timeout=10, what="ready once enforced")
    finally:
        sc.stop()


def test_a_pod_flagged_not_enforceable_is_not_ready_unless_a_policy_allows_it(world):
    """The webhook flags a pod that keeps NET_RAW (or shares its process namespace…)
    and tells its sidecar why; even once the kernel enforces the pod, the sidecar stays
    not ready — the app never starts — unless the policy accepts it
    (`egress.allowNotEnforceable`) (issue 21, capabilities)."""
    w, node = world, world["node"]
    flagged = node.add_pod(NS, "flag-0")
    policy = {"name": "local", "pools": [pool("gpu", [w["mock"].url], [{"name": "mistral-7b"}])]}
    sc = Sidecar(policy=policy, extra_args=["--egress-required", "--egress-not-enforceable", "keeps NET_RAW"],
                 cgroup=flagged["containers"]["vigie-sidecar"], wait_ready=False)
    try:
        readyz = lambda: sidecar_readyz(sc)  # noqa: E731
        r = wait_until(lambda: (x := readyz()) is not None and "not enforceable" in x.text and x,
                       what="not ready: not enforceable")
        assert r.status_code == 503 and "keeps NET_RAW" in r.text and "egress.allowNotEnforceable" in r.text
        sc.write_policy({**policy, "egress": {"allowNotEnforceable": True}})
        wait_until(lambda: readyz().status_code == 200, timeout=10, what="ready once a policy allows it")
    finally:
        sc.stop()


@pytest.mark.parametrize("egress, path, reason", [
    ({"allow": [{"cidr": "10.0.0.300/8"}]}, "egress.allow[0].cidr", "not an IP address or CIDR"),
    ({"allow": [{"cidr": "10.1.2.3/8"}]}, "egress.allow[0].cidr", "host bits set; write 10.0.0.0/8"),
    ({"allow": [{"cidr": "10.0.0.0/8", "ports": "9000-80"}]}, "egress.allow[0].ports", "reversed"),
    ({"sidecarAllow": [{"cidr": "::1", "ports": "http"}]}, "egress.sidecarAllow[0].ports", "not a port"),
    ({"dnsResolvers": ["dns.example"]}, "egress.dnsResolvers[0]", "not an IP address"),
    ({"sidecarAllow": [{"cidr": "0.0.0.0/0"}]}, "egress.sidecarAllow", "must not allow 192.0.2.1:9"),
    ({"redirect": [{"cidr": "10.0.0.1", "protocol": "EGRESS_PROTOCOL_UDP"}]}, "egress.redirect[0].protocol",
     "only TCP connections can be redirected"),
    ({"allow": [{"cidr": "10.0.0.0/8", "ports": str(1000 + 2 * i)} for i in range(9)]}, "egress.allow",
     "at most 8 fit"),
    ({"allow": [{"cidr": f"10.{i // 256}.{i % 256}.0/24"} for i in range(16385)]}, "egress.allow",
     "at most 16384 fit in the maps"),
])
def test_bad_egress_policies_are_refused_with_field_paths(control_planes, egress, path, reason):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": {"name": "bad", "egress": egress}}, token=admin)
    assert e.value.code == "InvalidArgument"
    assert path in e.value.text and reason in e.value.text, e.value.text


def test_only_agents_get_every_policy(control_planes):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    cp.call("PolicyService/ApplyPolicy", {"policy": {"name": "e", "egress": {"allow": [{"cidr": "10.0.0.0/8"}]}}},
            token=admin)
    workload = cp.token("w", "workload", namespace="shop")
    hello = {"hello": {"identity": {"node": "n1", "kind": "CLIENT_KIND_EGRESS_AGENT"}}}
    with pytest.raises(GrpcError) as e:
        cp.stream("DiscoveryService/Watch", hello, token=workload)
    assert "PermissionDenied" in e.value.text
    agent = cp.token("egress", "agent")
    with pytest.raises(GrpcError) as e:
        cp.stream("DiscoveryService/Watch",
                  {"hello": {"identity": {"namespace": "shop", "pod": "p", "kind": "CLIENT_KIND_SIDECAR"}}},
                  token=agent)
    assert "PermissionDenied" in e.value.text
