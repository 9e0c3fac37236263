#!/usr/bin/env python3
"""Webhook deliveries/s and event-to-delivery latency (issue 12). Standard library only.

  webhooks.py BASE TOKEN N [PORT] [paced]

Starts a receiver on 127.0.0.1:PORT (default 18099) that answers 204 at once, creates a
collection `wh_bench` and a webhook for its record.created events (the server must
allow 127.0.0.1 in outbound.allow_hosts), creates N records through POST /v1/batch
(100 per call, 4 threads), and waits for N deliveries. Prints JSON: deliveries/s (first
to last delivery received) and the latency from each event's time (in the payload) to
its arrival, p50 and p99, in milliseconds. With `paced`, the records are created one at
a time, 10 ms apart: the latency of the pipeline itself rather than of a queue.
"""

import concurrent.futures as cf
import http.server
import json
import sys
import threading
import time
import urllib.request
from datetime import datetime

arrivals = []
lock = threading.Lock()


class Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        now = time.time()
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()
        event = json.loads(body)
        t = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        with lock:
            arrivals.append((now, now - t))

    def log_message(self, *args):
        pass


def call(method, url, token, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=120) as res:
        text = res.read()
        return json.loads(text) if text else None


def main():
    base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    port = int(sys.argv[4]) if len(sys.argv) > 4 else 18099
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    call("POST", f"{base}/v1/collections", token, {
        "name": "wh_bench", "rules": {"create": ""},
        "fields": [{"name": "title", "type": "text"}, {"name": "n", "type": "integer"}],
    })
    call("POST", f"{base}/v1/webhooks", token, {"url": f"http://127.0.0.1:{port}/hook", "events": ["record.created"], "collection": "wh_bench"})
    ops = [{"method": "POST", "path": "/v1/collections/wh_bench/records", "body": {"title": f"t{i}", "n": i}} for i in range(n)]
    started = time.time()
    if len(sys.argv) > 5 and sys.argv[5] == "paced":
        for op in ops:
            call("POST", f"{base}/v1/collections/wh_bench/records", token, op["body"])
            time.sleep(0.01)
    else:
        with cf.ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda b: call("POST", f"{base}/v1/batch", token, {"operations": b}), [ops[i:i + 100] for i in range(0, n, 100)]))
    deadline = time.time() + 300
    while time.time() < deadline:
        with lock:
            if len(arrivals) >= n:
                break
        time.sleep(0.05)
    with lock:
        got = sorted(arrivals)
    if len(got) < n:
        print(f"webhooks.py: error: {len(got)} of {n} deliveries arrived", file=sys.stderr)
        sys.exit(1)
    span = got[-1][0] - started
    lat = sorted(l for _, l in got)
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)
    print(json.dumps({
        "deliveries": n,
        "seconds": round(span, 2),
        "deliveries_per_s": round(n / span),
        "latency_ms_p50": pick(0.50),
        "latency_ms_p99": pick(0.99),
    }))
    server.shutdown()


if __name__ == "__main__":
    main()
