"""Root-only fixtures for the eBPF egress tests: a node made of real cgroups.

A `Node` creates, under the cgroup v2 mount, its own attach root laid out as the
kubelet does (systemd driver with containerd, or cgroupfs), a PodList document that
names the pods and their containers, and runs processes inside those cgroups. A
`Remote` is a network namespace behind a veth pair: an external host with addresses
the test owns. `EgressAgent` is the real `vigie-egress` binary.

These tests need root, cgroup v2 and a kernel with cgroup BPF. They fail, loudly, when
those are missing: they are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from harness import Process, binary, free_port, in_cgroup, wait_until

# A probe run inside a cgroup: one socket operation, its outcome as JSON.
PROBE = r"""
import errno, json, socket, sys
op, family, host, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
try:
    if op == "tcp":
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3); s.connect((host, port)); s.close()
    elif op == "lsrr":
        # connect() to an allowed address, with an IPv4 loose source route whose first
        # hop (the packet's real destination) is sys.argv[5].
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([131, 7, 4]) + socket.inet_aton(sys.argv[5]) + b"\x01")
        s.connect((host, port)); s.close()
    elif op == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b"\x00" * 12, (host, port)); s.close()
    elif op == "ping":
        # A raw ICMP echo (what `ping` sends): no socket hook sees it.
        s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        s.settimeout(2)
        body = b"\x08\x00\x00\x00\x12\x34\x00\x01vigie!"
        total = sum((body[i] << 8) + body[i + 1] for i in range(0, len(body), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        csum = ~total & 0xFFFF
        s.sendto(body[:2] + bytes([csum >> 8, csum & 0xFF]) + body[4:], (host, 0))
        s.recv(128)
    elif op == "frame":
        # A whole Ethernet frame from an AF_PACKET socket (needs CAP_NET_RAW): IPv4 + UDP
        # to host:port, out of device sys.argv[5] towards MAC sys.argv[6], payload argv[7].
        dev, dst_mac, payload = sys.argv[5], bytes.fromhex(sys.argv[6].replace(":", "")), sys.argv[7].encode()
        src_mac = bytes.fromhex(open(f"/sys/class/net/{dev}/address").read().strip().replace(":", ""))
        src_ip = socket.inet_aton(sys.argv[8])
        udp = port.to_bytes(2, "big") * 2 + (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
        ip = bytearray(bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + b"\0\1\0\0" + bytes([64, 17]) + b"\0\0"
                       + src_ip + socket.inet_aton(host))
        total = sum((ip[i] << 8) + ip[i + 1] for i in range(0, 20, 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        ip[10:12] = (~total & 0xFFFF).to_bytes(2, "big")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        if len(sys.argv) > 9 and sys.argv[9] == "bypass":
            s.setsockopt(263, 20, 1)  # SOL_PACKET, PACKET_QDISC_BYPASS: straight to the driver
        s.bind((dev, 0))
        s.send(dst_mac + src_mac + b"\x08\x00" + bytes(ip) + udp)
    elif op == "rawtcp":
        # A TCP segment that is not a bare SYN (PSH|ACK, payload) from a raw socket.
        s = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_TCP)
        seg = (40000).to_bytes(2, "big") + port.to_bytes(2, "big") + bytes(8) + bytes([0x50, 0x18]) \
            + (65535).to_bytes(2, "big") + bytes(4) + b"raw-tcp-payload"
        s.sendto(seg, (host, 0))
    elif op == "xdp":
        # An AF_XDP socket registering its packet memory (what any AF_XDP use starts with).
        s = socket.socket(44, socket.SOCK_RAW)
        s.setsockopt(283, 4, bytes(32))  # SOL_XDP, XDP_UMEM_REG
    elif op == "family":
        # Only creates a socket of family `port` (AF_PACKET 17, AF_XDP 44, TIPC 30…).
        socket.socket(port, socket.SOCK_RAW if port in (17, 44) else socket.SOCK_DGRAM).close()
    elif op == "rr":
        # connect() to an allowed destination with an IPv4 record-route option.
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([7, 7, 4, 0, 0, 0, 0, 1]))
        s.connect((host, port)); s.close()
    elif op == "srh":
        # connect() to an allowed IPv6 destination with a segment-routing header (type 4),
        # which any unprivileged socket may set; both segments are the destination.
        seg = socket.inet_pton(socket.AF_INET6, host)
        srh = bytes([0, 4, 4, 1, 1, 0, 0, 0]) + seg + seg
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh)
        s.connect((host, port)); s.close()
    elif op == "fragment":
        # A lone IPv4 fragment (offset 1480) of a UDP datagram to host, from a raw socket.
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        body = b"x" * 32
        ip = bytes([0x45, 0]) + (20 + len(body)).to_bytes(2, "big") + b"\0\2" + (185).to_bytes(2, "big") \
            + bytes([64, 17]) + b"\0\0" + socket.inet_aton("0.0.0.0") + socket.inet_aton(host)
        s.sendto(ip + body, (host, 0))
    elif op == "bound":
        # connect() to a loopback address from a socket bound to device sys.argv[5]: the
        # SYN would leave by that device, towards its gateway.
        s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[5].encode())
        s.connect((host, port)); s.close()
    print(json.dumps({"ok": True}))
except OSError as e:
    print(json.dumps({"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__}))
"""


def require_root():
    if os.geteuid() != 0:
        raise RuntimeError("the egress tests load eBPF programs and create cgroups: run them as root (CI does)")


def cgroup2_mount() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup2":
            return Path(left.split()[4])
    raise RuntimeError("no cgroup2 file system is mounted")


def ensure_bpffs() -> Path:
    path = Path("/sys/fs/bpf")
    mounted = any(
        line.partition(" - ")[2].split()[0] == "bpf" and line.split()[4] == str(path)
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    )
    if not mounted:
        subprocess.run(["mount", "-t", "bpf", "bpf", str(path)], check=True)
    return path


class Node:
    """An attach root with pods laid out as on a Kubernetes node."""

    def __init__(self, name: str = "n1"):
        require_root()
        self.name = name
        self.tag = uuid.uuid4().hex[:8]
        self.root = cgroup2_mount() / f"vigie-e2e-{self.tag}"
        self.root.mkdir()
        self.pin_dir = ensure_bpffs() / f"vigie-e2e-{self.tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="vigie-node-"))
        self.pods_file = self.dir / "pods.json"
        self.pods: list[dict] = []
        self.write_pods()

    def add_pod(self, namespace: str, name: str, containers=("vigie-sidecar", "app"), layout: str = "systemd",
                labels: dict | None = None, enrolled: bool = True, write: bool = True) -> dict:
        uid = str(uuid.uuid4())
        if layout == "systemd":
            pod_dir = self.root / "kubepods.slice" / "kubepods-burstable.slice" / \
                f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        else:
            pod_dir = self.root / "kubepods" / "besteffort" / f"pod{uid}"
        pod_dir.mkdir(parents=True)
        statuses, cgroups = [], {}
        for c in containers:
            cid = uuid.uuid4().hex + uuid.uuid4().hex
            d = pod_dir / (f"cri-containerd-{cid}.scope" if layout == "systemd" else cid)
            d.mkdir()
            cgroups[c] = d
            statuses.append({"name": c, "containerID": f"containerd://{cid}"})
        all_labels = {"app": name, **(labels or {})}
        if enrolled:
            all_labels["vigie.io/egress"] = "enforced"
        doc = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": all_labels},
            "spec": {"nodeName": self.name, "serviceAccountName": "default"},
            "status": {"initContainerStatuses": statuses[:1], "containerStatuses": statuses[1:]},
        }
        self.pods.append(doc)
        if write:
            self.write_pods()
        return {"uid": uid, "dir": pod_dir, "containers": cgroups}

    def write_pods(self):
        tmp = self.pods_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "PodList", "items": self.pods}))
        tmp.replace(self.pods_file)

    def probe(self, cgroup: Path | None, op: str, host: str, port: int = 0, *extra: str) -> dict:
        family = "6" if ":" in host else "4"
        out = subprocess.run(in_cgroup(cgroup, [sys.executable, "-c", PROBE, op, family, host, str(port), *extra]),
                             capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"probe failed: {out.stderr}")
        return json.loads(out.stdout)

    def run(self, cgroup: Path, args: list, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(in_cgroup(cgroup, args), capture_output=True, text=True, **kw)

    def cleanup(self):
        shutil.rmtree(self.pin_dir, ignore_errors=True)
        dirs = sorted((p for p in self.root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, self.root]:
            procs = d / "cgroup.procs"
            if procs.exists():
                for pid in procs.read_text().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


class Remote:
    """A network namespace behind a veth pair: 10.231.<n>.2 (and fd31:<n>::2) over
    there, 10.231.<n>.1 here."""

    def __init__(self, n: int):
        self.ns = f"vigie-r{n}-{uuid.uuid4().hex[:4]}"
        self.host_if, self.peer_if = f"vgh{n}{self.ns[-4:]}", f"vgp{n}{self.ns[-4:]}"
        self.ip, self.local_ip = f"10.231.{n}.2", f"10.231.{n}.1"
        self.ip6 = f"fd31:{n}::2"
        self.servers: list[Process] = []
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.peer_if)
        sh("ip", "link", "set", self.peer_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.local_ip}/24", "dev", self.host_if)
        sh("ip", "-6", "addr", "add", f"fd31:{n}::1/64", "dev", self.host_if, "nodad")
        sh("ip", "link", "set", self.host_if, "up")
        ns = ["ip", "netns", "exec", self.ns]
        sh(*ns, "ip", "addr", "add", f"{self.ip}/24", "dev", self.peer_if)
        sh(*ns, "ip", "-6", "addr", "add", f"{self.ip6}/64", "dev", self.peer_if, "nodad")
        sh(*ns, "ip", "link", "set", self.peer_if, "up")
        sh(*ns, "ip", "link", "set", "lo", "up")

    def serve_tcp(self, port: int, ip: str | None = None) -> Process:
        """A TCP listener over there that accepts and closes."""
        code = ("import socket,sys\nfam=socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
                "s=socket.socket(fam);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(64);print('up',flush=True)\n"
                "while True:\n c,_=s.accept();c.close()\n")
        p = Process(["ip", "netns", "exec", self.ns, sys.executable, "-c", code, ip or self.ip, str(port)])
        assert p.proc.stdout.readline().strip() == b"up", p.log()
        self.servers.append(p)
        return p

    def serve_udp(self, port: int) -> Process:
        """A UDP listener over there; each datagram's payload is a line of its log."""
        code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "s.bind(('0.0.0.0',int(sys.argv[1])));print('up',flush=True)\n"
                "while True:\n d,_=s.recvfrom(2048);print(d.decode(errors='replace'),file=sys.stderr,flush=True)\n")
        p = Process(["ip", "netns", "exec", self.ns, sys.executable, "-c", code, str(port)])
        assert p.proc.stdout.readline().strip() == b"up", p.log()
        self.servers.append(p)
        return p

    def peer_mac(self) -> str:
        out = subprocess.run(["ip", "netns", "exec", self.ns, "cat", f"/sys/class/net/{self.peer_if}/address"],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def cleanup(self):
        for s in self.servers:
            s.stop()
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)


class EgressAgent:
    def __init__(self, node: Node, control_plane, token: str, dns: list[str], sidecar_port: int,
                 extra_args: list[str] | None = None, wait: bool = True, env: dict | None = None):
        self.node = node
        self.env = dict(env or {})
        self.metrics_port = free_port()
        token_path = node.dir / "agent-token"
        token_path.write_text(token)
        self.args = [
            binary("vigie-egress"),
            "--node", node.name,
            "--control-plane", control_plane.url,
            "--token-file", token_path,
            "--pods-file", node.pods_file,
            "--cgroup-root", node.root,
            "--pin-dir", node.pin_dir,
            "--state-dir", node.dir / "agent-state",
            "--sidecar-port", str(sidecar_port),
            "--dns", ",".join(dns),
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            # Sidecars ask this agent where redirected connections were going.
            "--lookup-address", f"127.0.0.1:{self.metrics_port}",
            "--resync-ms", "100",
            "--log-format", "json",
            *(extra_args or []),
        ]
        self.url = f"http://127.0.0.1:{self.metrics_port}"
        self.process: Process | None = None
        self.start(wait)

    def start(self, wait: bool = True):
        self.process = Process(self.args, env={"RUST_LOG": "info", **self.env},
                               log_path=self.node.dir / f"agent-{time.monotonic_ns()}.log")
        if wait:
            wait_until(self.ready, timeout=30, what="egress agent readiness")

    def ready(self) -> bool:
        import httpx
        if not self.process.alive():
            raise RuntimeError(f"egress agent exited:\n{self.process.log()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def metrics(self) -> str:
        import httpx
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text

    def events(self) -> list[dict]:
        out = []
        for line in self.process.log().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("fields", {}).get("event") == "egress.denied":
                out.append(rec["fields"])
        return out

    def stop(self, sig=None):
        if self.process:
            self.process.stop(sig)
