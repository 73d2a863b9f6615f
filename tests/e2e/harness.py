"""Starts the real Vigie binaries for end-to-end tests, the demo and benchmarks.

Binaries come from $VIGIE_BIN_DIR (set by `cargo xtask`), default target/debug.
Every process is started in its own session and killed at teardown.
"""

from __future__ import annotations

import json
import os
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


class Process:
    def __init__(self, args: list[str], env: dict | None = None, log_path: Path | None = None):
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="vigie-", suffix=".log")[1])
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(a) for a in args],
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

    def stop(self, sig=signal.SIGKILL):
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

    def set_behaviour(self, **behaviour) -> dict:
        r = httpx.put(f"{self.url}/mock/behaviour", json=behaviour, timeout=5)
        r.raise_for_status()
        return r.json()

    def stop(self):
        self.process.stop()


def pool(name: str, endpoints: list[str], models: list[dict], kind: str = "POOL_KIND_VLLM", **extra) -> dict:
    return {"name": name, "kind": kind, "endpoints": [{"url": u} for u in endpoints], "models": models, **extra}


class Sidecar:
    """A `vigie-sidecar` on free loopback ports, reading a policy file it owns."""

    def __init__(self, policy: dict, extra_args: list[str] | None = None, env: dict | None = None, workdir: Path | None = None):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="vigie-sidecar-"))
        self.policy_path = self.dir / "policy.json"
        self.write_policy(policy)
        self.port = free_port()
        self.admin_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        args = [
            binary("vigie-sidecar"),
            "--listen", f"127.0.0.1:{self.port}",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--policy-file", self.policy_path,
            "--policy-poll-ms", "100",
            *(extra_args or []),
        ]
        self.process = Process(args, env={"RUST_LOG": "info,pingora=warn", **(env or {})}, log_path=self.dir / "sidecar.log")
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

    def policy_version(self) -> str:
        return httpx.get(f"{self.admin_url}/readyz", timeout=2).json()["version"]

    def metrics(self) -> str:
        return httpx.get(f"{self.admin_url}/metrics", timeout=2).text

    def stop(self, sig=signal.SIGKILL):
        self.process.stop(sig)
