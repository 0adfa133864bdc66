"""An OTLP/HTTP receiver for km's telemetry tests.

It decodes what km exports with the official OpenTelemetry protobuf definitions (the
`opentelemetry-proto` package, which scripts/test installs beside the MCP SDK, pinned) and writes
each request it received as one JSON line, so that the Rust tests can check spans and metrics
without any protobuf code of their own.

Usage: python receiver.py OUT.jsonl [--hang]

Listens on 127.0.0.1 on a port the system chooses, prints that port on stdout (one line), and
serves POST /v1/traces and POST /v1/metrics until it is killed. Each line of OUT.jsonl is
{"path": ..., "content_type": ..., "headers": {...}, "request": <the decoded export request>},
the request as protobuf's JSON mapping with proto field names, trace and span ids in lower-case
hex (as traceparent writes them) instead of base64. Anything that does not decode is answered
with 400 and recorded with "error".

With --hang it accepts connections and reads requests but never answers: a Collector that hangs.
"""

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

SERVICES = {
    "/v1/traces": (
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
}

ID_FIELDS = {"trace_id", "span_id", "parent_span_id"}

lock = threading.Lock()


def hex_ids(value):
    """Rewrites the base64 ids of the JSON mapping as hex, everywhere in `value`."""
    if isinstance(value, dict):
        return {
            k: (base64.b64decode(v).hex() if k in ID_FIELDS and isinstance(v, str) else hex_ids(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hex_ids(v) for v in value]
    return value


def main(argv):
    out_path = argv[0]
    hang = "--hang" in argv[1:]
    out = open(out_path, "a", encoding="utf-8")

    def record(entry):
        with lock:
            out.write(json.dumps(entry) + "\n")
            out.flush()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if hang:
                record({"path": self.path, "hung": True})
                while True:
                    time.sleep(3600)
            entry = {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "headers": {k.lower(): v for k, v in self.headers.items()},
            }
            service = SERVICES.get(self.path)
            try:
                if service is None:
                    raise ValueError(f"no OTLP service at {self.path}")
                request = service[0].FromString(body)
                entry["request"] = hex_ids(
                    MessageToDict(request, preserving_proto_field_name=True)
                )
            except Exception as e:  # the test reads the error; the exporter gets a 400
                entry["error"] = str(e)
                record(entry)
                self.send_response(400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            record(entry)
            answer = service[1]().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
