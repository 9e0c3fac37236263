#!/usr/bin/env python3
"""The job-queue and import benchmarks (bench/jobs.sh runs them). Standard library only.

  jobs.py jobs BASE TOKEN N WORKERS          enqueue N jobs, then WORKERS threads claim
                                             100 and complete them in one call each;
                                             prints JSON: enqueue/s, jobs/s
  jobs.py import-lintel BASE TOKEN ROWS      one NDJSON import (mode=atomic) of ROWS rows
  jobs.py import-pocketbase BASE EMAIL PASSWORD ROWS BATCH
                                             the same rows through PocketBase's batch API,
                                             BATCH rows per request

Rows: {"title": "post N", "views": N % 1000, "published": N even}. Each prints one JSON
line with its figures; any failed request stops it with a message.
"""

import concurrent.futures as cf
import json
import sys
import threading
import time
import urllib.error
import urllib.request


def die(msg):
    print(f"jobs.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def call(method, url, token=None, body=None, ctype="application/json", raw=None, ok=(200, 201, 202, 204)):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", token if token.startswith("Bearer ") or " " in token else f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=600) as res:
            text = res.read()
            if res.status not in ok:
                die(f"{method} {url}: {res.status} {text[:300]!r}")
            return json.loads(text) if text else None
    except urllib.error.HTTPError as e:
        die(f"{method} {url}: {e.code} {e.read()[:500]!r}")


def rows(n):
    for i in range(n):
        yield {"title": f"post {i}", "views": i % 1000, "published": i % 2 == 0}


def bench_jobs(base, token, n, workers):
    ops = [{"method": "POST", "path": "/v1/jobs", "body": {"kind": "bench", "payload": {"i": i}}} for i in range(n)]
    batches = [ops[i:i + 100] for i in range(0, n, 100)]
    started = time.monotonic()
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda b: call("POST", f"{base}/v1/batch", token, {"operations": b}), batches))
    enqueue_s = time.monotonic() - started

    done = 0
    lock = threading.Lock()

    def worker():
        nonlocal done
        while True:
            claimed = call("POST", f"{base}/v1/jobs/claim", token, {"kinds": ["bench"], "max": 100, "lease": 60})["items"]
            if not claimed:
                return
            items = [{"id": j["id"], "leaseId": j["leaseId"], "result": {"ok": True}} for j in claimed]
            res = call("POST", f"{base}/v1/jobs/complete", token, {"items": items})["items"]
            bad = [r for r in res if r["status"] != 200]
            if bad:
                die(f"completions refused: {bad[:3]}")
            with lock:
                done += len(items)

    started = time.monotonic()
    with cf.ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(worker) for _ in range(workers)]:
            f.result()
    work_s = time.monotonic() - started
    if done != n:
        die(f"completed {done} of {n}")
    print(json.dumps({
        "jobs": n,
        "workers": workers,
        "enqueue_per_s": round(n / enqueue_s),
        "claim_complete_per_s": round(n / work_s),
    }))


def bench_import_lintel(base, token, n):
    body = "".join(json.dumps(r) + "\n" for r in rows(n)).encode()
    started = time.monotonic()
    job = call("POST", f"{base}/v1/collections/posts/import?mode=atomic", token, raw=body, ctype="application/x-ndjson")
    href = job["_links"]["self"]["href"]
    while True:
        job = call("GET", f"{base}{href}", token)
        if job["status"] in ("succeeded", "dead", "cancelled"):
            break
        time.sleep(0.05)
    took = time.monotonic() - started
    if job["status"] != "succeeded" or job["result"]["imported"] != n:
        die(f"the import did not succeed: {json.dumps(job)[:500]}")
    print(json.dumps({"rows": n, "seconds": round(took, 2), "rows_per_s": round(n / took)}))


def bench_import_pocketbase(base, email, password, n, batch):
    auth = call("POST", f"{base}/api/collections/_superusers/auth-with-password", body={"identity": email, "password": password})
    token = auth["token"]
    call("PATCH", f"{base}/api/settings", token, {"batch": {"enabled": True, "maxRequests": batch, "timeout": 600, "maxBodySize": 0}})
    all_rows = list(rows(n))
    started = time.monotonic()
    for i in range(0, n, batch):
        reqs = [{"method": "POST", "url": "/api/collections/posts/records", "body": r} for r in all_rows[i:i + batch]]
        out = call("POST", f"{base}/api/batch", token, {"requests": reqs})
        bad = [r for r in out if r.get("status") != 200]
        if bad:
            die(f"PocketBase refused rows: {bad[:2]}")
    took = time.monotonic() - started
    print(json.dumps({"rows": n, "batch": batch, "seconds": round(took, 2), "rows_per_s": round(n / took)}))


def main(argv):
    if len(argv) < 2:
        die(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "jobs":
        bench_jobs(args[0], args[1], int(args[2]), int(args[3]))
    elif cmd == "import-lintel":
        bench_import_lintel(args[0], args[1], int(args[2]))
    elif cmd == "import-pocketbase":
        bench_import_pocketbase(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        die(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
