"""An OTLP/gRPC collector for `cargo xtask bench telemetry` that accepts every export
and, unlike tests/e2e/otlp.py, does not decode it: the benchmark measures the sidecar,
not the receiver's Python decoding (which shares a core with the load generator).
Optionally slow (`--delay`). Prints `ready` once listening."""

import argparse
import time
from concurrent import futures

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_svc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_svc

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--delay", type=float, default=0.0)
a = p.parse_args()

responses = {
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export":
        trace_svc.ExportTraceServiceResponse().SerializeToString(),
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export":
        logs_svc.ExportLogsServiceResponse().SerializeToString(),
}


class Sink(grpc.GenericRpcHandler):
    def service(self, details):
        answer = responses.get(details.method)
        if answer is None:
            return None

        def export(_request: bytes, _context) -> bytes:
            if a.delay:
                time.sleep(a.delay)
            return answer
        # Raw bytes in and out: nothing is parsed.
        return grpc.unary_unary_rpc_method_handler(export, request_deserializer=None, response_serializer=None)


server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[Sink()])
server.add_insecure_port(f"127.0.0.1:{a.port}")
server.start()
print("ready", flush=True)
server.wait_for_termination()
