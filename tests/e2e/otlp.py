"""An independent OpenTelemetry OTLP receiver (a stand-in collector) for end-to-end tests.

Built only on the official generated OTLP modules (opentelemetry-proto) and grpcio: no
OpenTelemetry SDK, so what Vigie exports is checked against the protocol itself and not
against another implementation of the same exporter code.

    with OtlpReceiver("grpc") as otlp:          # or "http" (OTLP/HTTP, protobuf)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}
        ...
        spans = otlp.wait_for(lambda r: r.spans(), what="a span")

It can also play a collector that is slow (set_delay), failing (set_status) or down
(stop, then start again on the same port).
"""

from __future__ import annotations

import gzip
import socket
import subprocess
import sys
import threading
import time
import zlib
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc
from opentelemetry.proto.trace.v1 import trace_pb2

# signal -> (gRPC service descriptor, request class, response class, OTLP/HTTP path)
_SIGNALS = {
    "traces": (trace_svc.DESCRIPTOR.services_by_name["TraceService"],
               trace_svc.ExportTraceServiceRequest, trace_svc.ExportTraceServiceResponse, "/v1/traces"),
    "logs": (logs_svc.DESCRIPTOR.services_by_name["LogsService"],
             logs_svc.ExportLogsServiceRequest, logs_svc.ExportLogsServiceResponse, "/v1/logs"),
    "metrics": (metrics_svc.DESCRIPTOR.services_by_name["MetricsService"],
                metrics_svc.ExportMetricsServiceRequest, metrics_svc.ExportMetricsServiceResponse,
                "/v1/metrics"),
}
_BY_PATH = {v[3]: k for k, v in _SIGNALS.items()}
_DOWN = object()  # _export's answer when stop() came while the request was being handled

# set_status() takes either kind of code; each protocol answers with its own equivalent.
_HTTP_TO_GRPC = {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
                 403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
                 429: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL,
                 502: grpc.StatusCode.UNAVAILABLE, 503: grpc.StatusCode.UNAVAILABLE,
                 504: grpc.StatusCode.DEADLINE_EXCEEDED}
_GRPC_TO_HTTP = {grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
                 grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
                 grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
                 grpc.StatusCode.DEADLINE_EXCEEDED: 504}


def _grpc_code(code) -> grpc.StatusCode:
    if isinstance(code, grpc.StatusCode):
        return code
    if code < 100:  # a gRPC status number (14 = UNAVAILABLE)
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return _HTTP_TO_GRPC.get(code, grpc.StatusCode.UNKNOWN)


def _http_code(code) -> int:
    if isinstance(code, int) and code >= 100:
        return code
    return _GRPC_TO_HTTP.get(_grpc_code(code), 500)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- decoding: protobuf messages to plain dicts that tests can compare -------------------

def _value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attrs(v.kvlist_value.values)
    return getattr(v, kind)  # string/bool/int/double/bytes: already Python values


def _attrs(kvs) -> dict:
    return {kv.key: _value(kv.value) for kv in kvs}


def _span(span, resource: dict, scope: str) -> dict:
    return {
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex(), "name": span.name,
        "kind": trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
        "attributes": _attrs(span.attributes),
        "events": [{"name": e.name, "time_ns": e.time_unix_nano, "attributes": _attrs(e.attributes)}
                   for e in span.events],
        "links": [{"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex(),
                   "trace_state": link.trace_state, "flags": link.flags,
                   "attributes": _attrs(link.attributes)} for link in span.links],
        "status": {"code": trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                   "message": span.status.message},
        "resource": resource, "scope": scope, "flags": span.flags, "trace_state": span.trace_state,
    }


def _log(rec, resource: dict, scope: str) -> dict:
    return {
        "time_ns": rec.time_unix_nano, "observed_ns": rec.observed_time_unix_nano,
        "severity_number": int(rec.severity_number), "severity_text": rec.severity_text,
        "body": _value(rec.body) if rec.HasField("body") else None,
        "attributes": _attrs(rec.attributes), "trace_id": rec.trace_id.hex(),
        "span_id": rec.span_id.hex(), "event_name": getattr(rec, "event_name", ""),
        "resource": resource, "scope": scope,
    }


def _decode(signal: str, req) -> tuple[list, list]:
    spans, logs = [], []
    if signal == "traces":
        for rs in req.resource_spans:
            resource = _attrs(rs.resource.attributes)
            spans += [_span(s, resource, ss.scope.name) for ss in rs.scope_spans for s in ss.spans]
    elif signal == "logs":
        for rl in req.resource_logs:
            resource = _attrs(rl.resource.attributes)
            logs += [_log(r, resource, sl.scope.name) for sl in rl.scope_logs for r in sl.log_records]
    return spans, logs  # metrics: accepted, counted, kept in raw(), not decoded


class OtlpReceiver:
    """A stand-in OTLP collector on 127.0.0.1 (gRPC or OTLP/HTTP protobuf). Thread-safe."""

    def __init__(self, protocol: str = "grpc", port: int | None = None):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        self.protocol = protocol
        # Chosen once: the endpoint is known before start() and survives stop()/start().
        self.port = port or _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._spans: list[dict] = []
        self._logs: list[dict] = []
        self._raw: list[bytes] = []
        self._delay = 0.0
        self._status = None
        self._server = None
        # Set by stop(): wakes handlers sleeping in a delay, and tells them this server
        # incarnation is gone, so a request answered by nobody is not recorded as accepted.
        self._stopped = threading.Event()

    # --- control -------------------------------------------------------------------------

    def start(self) -> "OtlpReceiver":
        with self._lock:
            if self._server is not None:
                return self
            self._stopped = threading.Event()
            self._server = self._start_grpc() if self.protocol == "grpc" else self._start_http()
        return self

    def stop(self):
        with self._lock:
            server, self._server = self._server, None
            self._stopped.set()
        if server is None:
            return
        if self.protocol == "grpc":
            server.stop(0).wait()  # cancels in-flight calls and closes the listening socket
            server.pool.shutdown(wait=False)  # its idle threads would pile up over restarts
        else:
            server.shutdown()      # ends serve_forever
            server.server_close()  # closes the listening socket
            for conn in list(server.conns):  # and kept-alive connections: a dead collector
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def set_delay(self, seconds: float):
        with self._lock:
            self._delay = max(0.0, float(seconds))

    def set_status(self, code: int | grpc.StatusCode | None):
        """None: accept. Otherwise fail every export: a gRPC code (grpc.StatusCode or its
        number, 14 = UNAVAILABLE) or an HTTP status (503); each is mapped to the other
        protocol's equivalent."""
        with self._lock:
            self._status = None if code in (0, 200, grpc.StatusCode.OK) else code

    # --- what was received ---------------------------------------------------------------

    def spans(self) -> list[dict]:
        with self._lock:
            return list(self._spans)

    def logs(self) -> list[dict]:
        with self._lock:
            return list(self._logs)

    def raw(self) -> list[bytes]:
        """Every export body received (accepted or not), decompressed, as sent."""
        with self._lock:
            return list(self._raw)

    def requests(self) -> int:
        with self._lock:
            return len(self._raw)

    def clear(self):
        with self._lock:
            self._spans.clear()
            self._logs.clear()
            self._raw.clear()

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "OTLP data"):
        deadline = time.monotonic() + timeout
        last_exc = None
        while True:
            try:
                value = predicate(self)
                if value:
                    return value
            except Exception as exc:  # noqa: BLE001 - e.g. IndexError before data arrives
                last_exc = exc
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {what} (requests={self.requests()}, "
                    f"spans={len(self.spans())}, logs={len(self.logs())})"
                    + (f": {last_exc!r}" if last_exc else ""))
            time.sleep(0.05)

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- shared request path ---------------------------------------------------------------

    def _export(self, signal: str, body: bytes):
        """Records one export body, waits out the delay, then returns the failure code to
        answer with, _DOWN if stop() came meanwhile, or None once the decoded data is stored
        (even if the client gave up waiting: a real collector keeps what it received).
        Raises DecodeError."""
        with self._lock:
            self._raw.append(body)
            delay, stopped = self._delay, self._stopped
        req = _SIGNALS[signal][1].FromString(body)
        if delay:
            stopped.wait(delay)
        with self._lock:
            if stopped.is_set():  # the collector went down meanwhile: nobody answers
                return _DOWN
            if self._status is not None:
                return self._status  # a failed export is not accepted: the client retries
            spans, logs = _decode(signal, req)
            self._spans += spans
            self._logs += logs
        return None

    def _start_grpc(self):
        # Generic handlers with no request deserializer: the handler gets the message bytes
        # exactly as received (gRPC has already undone any gzip), which raw() keeps for leak
        # checks; the generated stubs would hand over an already-parsed message.
        def handler(signal):
            def export(body: bytes, context):
                try:
                    code = self._export(signal, body)
                except DecodeError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad {signal} request: {exc}")
                if code is _DOWN:  # already cancelled by server.stop(0)
                    context.abort(grpc.StatusCode.UNAVAILABLE, "OtlpReceiver stopped")
                if code is not None:
                    context.abort(_grpc_code(code), "OtlpReceiver: failure set by the test")
                return _SIGNALS[signal][2]()
            return grpc.unary_unary_rpc_method_handler(
                export, request_deserializer=None,
                response_serializer=_SIGNALS[signal][2].SerializeToString)

        pool = futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix=f"otlp-grpc-{self.port}")
        server = grpc.server(
            pool,
            handlers=[grpc.method_handlers_generic_handler(svc.full_name, {"Export": handler(sig)})
                      for sig, (svc, *_) in _SIGNALS.items()],
            # No SO_REUSEPORT: a port already taken must fail to bind, not be shared.
            options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20)])
        try:
            bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        except RuntimeError:
            bound = 0
        if bound != self.port:
            raise OSError(f"OtlpReceiver: cannot bind 127.0.0.1:{self.port} (gRPC)")
        server.start()
        server.pool = pool
        return server

    def _start_http(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as exporters' HTTP clients use

            def setup(self):
                super().setup()
                self.server.conns.add(self.connection)

            def finish(self):
                self.server.conns.discard(self.connection)
                super().finish()

            def _answer(self, code: int, body: bytes = b"", ctype: str = "application/x-protobuf"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0], 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                body = self._body()  # always read, so a kept-alive connection stays in sync
                signal = _BY_PATH.get(self.path.split("?")[0])
                if signal is None:
                    return self._answer(404, b"not found", "text/plain")
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if ctype != "application/x-protobuf":
                    return self._answer(415, b"only application/x-protobuf", "text/plain")
                encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
                try:
                    if encoding not in ("gzip", "identity", ""):
                        raise ValueError(f"unsupported Content-Encoding {encoding}")
                    body = gzip.decompress(body) if encoding == "gzip" else body
                    code = receiver._export(signal, body)
                except (OSError, EOFError, zlib.error, ValueError, DecodeError) as exc:
                    return self._answer(400, str(exc).encode(), "text/plain")
                if code is _DOWN:  # no answer: the connection drops, as a dead collector's would
                    self.close_connection = True
                    return self.connection.shutdown(socket.SHUT_RDWR)
                if code is not None:
                    # An empty body is a valid (empty) google.rpc.Status message.
                    return self._answer(_http_code(code))
                self._answer(200, _SIGNALS[signal][2]().SerializeToString())

            def log_message(self, *args):
                pass  # keep pytest output clean

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True  # rebinding right after stop(), despite TIME_WAIT
            daemon_threads = True

            def handle_error(self, request, client_address):
                if not isinstance(sys.exc_info()[1], OSError):  # not a connection torn down by stop()
                    super().handle_error(request, client_address)

        server = Server(("127.0.0.1", self.port), Handler)
        server.conns = set()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=f"otlp-http-{self.port}", daemon=True).start()
        return server


def sink_process(port: int, cpu: int, clear_every: float = 2.0) -> subprocess.Popen:
    """A gRPC receiver in a process of its own pinned to `cpu`, dropping what it got every
    `clear_every` seconds (benchmarks: a collector that costs the measured proxy nothing).
    Returns once it listens; kill() it to stop."""
    here = str(Path(__file__).resolve().parent)
    code = (f"import sys, time; sys.path.insert(0, {here!r}); from otlp import OtlpReceiver\n"
            f"r = OtlpReceiver('grpc', port={port}).start(); print('ready', flush=True)\n"
            f"while True:\n    time.sleep({clear_every}); r.clear()\n")
    proc = subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", code], stdout=subprocess.PIPE)
    proc.stdout.readline()
    return proc
