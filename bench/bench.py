#!/usr/bin/env python3
"""Helpers for bench/run.sh: readiness, collection setup, seeding, the report.

Standard library only. Every subcommand exits non-zero with a message on
stderr (including the server's response body) when a step fails.

  bench.py free-port PORT                      print PORT, or the next free one
  bench.py wait-ready URL PID TIMEOUT_S        poll URL until it answers 200
  bench.py setup-lintel BASE TOKEN RECORDS IDS_OUT
  bench.py setup-pocketbase BASE EMAIL PASSWORD RECORDS IDS_OUT [LOGS]
  bench.py report RESULTS_TSV MARKDOWN_OUT
"""

import concurrent.futures as cf
import json
import os
import socket
import sys
import time
import urllib.error
import urllib.request

SEED_WORKERS = 4
BATCH_SIZE = 100
CATEGORIES = ["news", "tech", "life"]

COLLECTION_FIELDS_LINTEL = [
    {"name": "title", "type": "text", "required": True},
    {"name": "body", "type": "text"},
    {"name": "views", "type": "integer"},
    {"name": "published", "type": "bool"},
    {"name": "category", "type": "select", "values": CATEGORIES},
]

COLLECTION_FIELDS_PB = [
    {"name": "title", "type": "text", "required": True},
    {"name": "body", "type": "text"},
    {"name": "views", "type": "number", "onlyInt": True},
    {"name": "published", "type": "bool"},
    {"name": "category", "type": "select", "values": CATEGORIES, "maxSelect": 1},
]

# The list workload's query, checked once before the load.
LIST_QUERY_LINTEL = "filter=views%3E500%20%26%26%20published%3Dtrue&sort=-views&perPage=20"
LIST_QUERY_PB = "filter=%28views%3E500%20%26%26%20published%3Dtrue%29&sort=-views&perPage=20"


class StepError(Exception):
    pass


def die(msg):
    print(f"bench.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def warn(msg):
    print(f"bench.py: warning: {msg}", file=sys.stderr)


def record(n):
    """The deterministic record number n (1-based)."""
    return {
        "title": f"post {n}",
        "body": f"Body of post {n}. " + "Lorem ipsum dolor sit amet. " * (n % 5 + 1),
        "views": n % 1000,
        "published": n % 2 == 0,
        "category": CATEGORIES[n % 3],
    }


def http(method, url, body=None, headers=None, timeout=30):
    """Returns (status, parsed JSON or raw text). Never raises on HTTP errors."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise StepError(f"{method} {url}: connection failed: {e}") from e
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def expect(step, method, url, want, body=None, headers=None):
    status, resp = http(method, url, body, headers)
    if status not in want:
        shown = resp if isinstance(resp, str) else json.dumps(resp)
        raise StepError(
            f"{step}: {method} {url} answered {status}, expected {sorted(want)}; body: {shown[:2000]}"
        )
    return resp


# ---------------------------------------------------------------- seeding


def seed(records, batch_fn, single_fn):
    """Seed 1..records with batch_fn(list of n) -> ids (or None when batching is
    unavailable), falling back to single_fn(n) -> id. Returns the ids."""
    numbers = list(range(1, records + 1))
    chunks = [numbers[i : i + BATCH_SIZE] for i in range(0, len(numbers), BATCH_SIZE)]
    ids = []
    t0 = time.monotonic()
    use_batch = batch_fn is not None
    if use_batch:
        first = batch_fn(chunks[0])
        if first is None:
            use_batch = False
        else:
            ids.extend(first)
            with cf.ThreadPoolExecutor(SEED_WORKERS) as pool:
                for got in pool.map(batch_fn, chunks[1:]):
                    if got is None:
                        raise StepError("the batch endpoint failed part-way through seeding")
                    ids.extend(got)
    if not use_batch:
        with cf.ThreadPoolExecutor(SEED_WORKERS * 4) as pool:
            ids.extend(pool.map(single_fn, numbers))
    took = time.monotonic() - t0
    how = f"batches of {BATCH_SIZE}" if use_batch else "single POSTs"
    print(f"  seeded {len(ids)} records in {took:.1f}s ({how})", file=sys.stderr)
    if len(ids) != records:
        raise StepError(f"seeding made {len(ids)} records, expected {records}")
    return ids


def write_ids(ids, path):
    with open(path, "w") as f:
        for i in ids:
            f.write(f"{i}\n")


def setup_lintel(base, token, records, ids_out):
    auth = {"Authorization": f"Bearer {token}"}
    coll = {
        "name": "posts",
        "kind": "table",
        "fields": COLLECTION_FIELDS_LINTEL,
        "indexes": [{"fields": ["views"]}],
        # Open like PocketBase's collection below (missing rules mean superusers only).
        "rules": {"list": "", "view": "", "create": ""},
    }
    expect("create collection posts", "POST", f"{base}/v1/collections", {200, 201}, coll, auth)
    records_path = "/v1/collections/posts/records"
    batch_warned = []

    def single(n):
        resp = expect(f"create record {n}", "POST", base + records_path, {200, 201}, record(n))
        if not isinstance(resp, dict) or "id" not in resp:
            raise StepError(f"create record {n}: response has no id: {resp!r:.500}")
        return resp["id"]

    def batch(chunk):
        ops = [{"method": "POST", "path": records_path, "body": record(n)} for n in chunk]
        status, resp = http("POST", f"{base}/v1/batch", {"operations": ops})
        if status != 200:
            if not batch_warned:
                batch_warned.append(True)
                warn(
                    f"POST /v1/batch answered {status} ({str(resp)[:500]}); "
                    "seeding Lintel with single POSTs instead"
                )
            return None
        results = resp.get("results") if isinstance(resp, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            raise StepError(f"POST /v1/batch: unexpected body: {json.dumps(resp)[:2000]}")
        out = []
        for n, r in zip(chunk, results):
            if r.get("status") not in (200, 201) or "id" not in (r.get("body") or {}):
                raise StepError(f"POST /v1/batch: record {n} failed: {json.dumps(r)[:2000]}")
            out.append(r["body"]["id"])
        return out

    ids = seed(records, batch, single)
    check_reads(base, f"{base}{records_path}/{{id}}", f"{base}{records_path}?{LIST_QUERY_LINTEL}", ids)
    write_ids(ids, ids_out)


def setup_pocketbase(base, email, password, records, ids_out, logs="on"):
    resp = expect(
        "superuser login",
        "POST",
        f"{base}/api/collections/_superusers/auth-with-password",
        {200},
        {"identity": email, "password": password},
    )
    auth = {"Authorization": resp["token"]}
    settings = {"batch": {"enabled": True, "maxRequests": BATCH_SIZE, "timeout": 30}}
    if logs == "off":
        settings["logs"] = {"maxDays": 0}
    status, resp = http("PATCH", f"{base}/api/settings", settings, auth)
    batch_ok = status == 200
    if not batch_ok:
        warn(f"enabling PocketBase's batch API failed ({status}: {str(resp)[:500]}); using single POSTs")
    coll = {
        "name": "posts",
        "type": "base",
        "listRule": "",
        "viewRule": "",
        "createRule": "",
        "fields": COLLECTION_FIELDS_PB,
        "indexes": ["CREATE INDEX idx_views ON posts (views)"],
    }
    expect("create collection posts", "POST", f"{base}/api/collections", {200}, coll, auth)
    records_path = "/api/collections/posts/records"

    def single(n):
        resp = expect(f"create record {n}", "POST", base + records_path, {200}, record(n))
        return resp["id"]

    def batch(chunk):
        reqs = [{"method": "POST", "url": records_path, "body": record(n)} for n in chunk]
        status, resp = http("POST", f"{base}/api/batch", {"requests": reqs}, auth, timeout=60)
        if status != 200 or not isinstance(resp, list) or len(resp) != len(chunk):
            raise StepError(f"POST /api/batch answered {status}: {json.dumps(resp)[:2000]}")
        out = []
        for n, r in zip(chunk, resp):
            if r.get("status") != 200:
                raise StepError(f"POST /api/batch: record {n} failed: {json.dumps(r)[:2000]}")
            out.append(r["body"]["id"])
        return out

    ids = seed(records, batch if batch_ok else None, single)
    check_reads(base, f"{base}{records_path}/{{id}}", f"{base}{records_path}?{LIST_QUERY_PB}", ids)
    write_ids(ids, ids_out)


def check_reads(base, get_tmpl, list_url, ids):
    """Check that the read workloads answer what they should before the load."""
    for i in (ids[0], ids[len(ids) // 2], ids[-1]):
        resp = expect("get a seeded record", "GET", get_tmpl.format(id=i), {200})
        if not isinstance(resp, dict) or resp.get("id") != i:
            raise StepError(f"get record {i}: unexpected body: {json.dumps(resp)[:1000]}")
    resp = expect("list with filter and sort", "GET", list_url, {200})
    items = None
    if isinstance(resp, dict):
        items = resp.get("items", resp.get("records", resp.get("data")))
    if not isinstance(items, list):
        warn(f"list response has no items array; body starts: {json.dumps(resp)[:300]}")
        return
    if len(items) != 20:
        warn(f"list returned {len(items)} items, expected 20")
    try:
        views = [it["views"] for it in items]
        ok = all(v > 500 and it["published"] is True for v, it in zip(views, items))
        ok = ok and views == sorted(views, reverse=True)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        warn(f"list items do not match the filter/sort; first item: {json.dumps(items[:1])[:300]}")


# ------------------------------------------------------------ small helpers


def free_port(port):
    for p in range(port, port + 200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As the servers do, so that a port left in TIME_WAIT by the
            # previous run counts as free while a listening one does not.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            return p
    die(f"no free port from {port} to {port + 199}")


def wait_ready(url, pid, timeout):
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            die(f"the server (pid {pid}) exited before {url} answered")
        try:
            status, body = http("GET", url, timeout=2)
            if status == 200:
                return
            last = f"{status}: {str(body)[:300]}"
        except StepError as e:
            last = str(e)
        time.sleep(0.2)
    die(f"{url} did not answer 200 within {timeout}s (last: {last})")


# ------------------------------------------------------------------ report


def fmt_num(x, digits=0):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def ratio(a, b, digits=2):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.{digits}f}x"


def report(tsv, md_out):
    # Lines: "run <side> <workload> <rps> <p50_us> <p99_us> <non2xx> <sockerr> <requests>"
    #        "mem <side> <stage> <kb>"   "info <key> <value...>"
    runs, mem, info = {}, {}, {}
    with open(tsv) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "run":
                _, side, wl, rps, p50, p99, non2xx, sockerr, n = parts
                runs[(side, wl)] = dict(
                    rps=float(rps), p50=float(p50) / 1000, p99=float(p99) / 1000,
                    non2xx=int(non2xx), sockerr=int(sockerr), n=int(n),
                )
            elif parts[0] == "mem":
                mem[(parts[1], parts[2])] = int(parts[3]) / 1024
            elif parts[0] == "info":
                info[parts[1]] = parts[2]

    # Sides: "lintel" (Lintel on SQLite), "lintel-pg" (Lintel on PostgreSQL), "pocketbase".
    sides = {side for side, _ in runs} | {side for side, _ in mem}
    has_pg = "lintel-pg" in sides
    # The Lintel-vs-PocketBase tables, unless Lintel on PostgreSQL is all there is.
    has_main = bool(sides & {"lintel", "pocketbase"}) or not has_pg

    workloads = [("get", "get one record by id"), ("list", "list 20, filter + sort"), ("create", "create a record")]
    lat = lambda r: "-" if r is None else f"{r['p50']:.2f} / {r['p99']:.2f}"
    header = ["workload", "lintel req/s", "pb req/s", "ratio", "lintel p50/p99 ms", "pb p50/p99 ms", "p99 ratio"]
    rows = []
    for wl, label in workloads:
        l, p = runs.get(("lintel", wl)), runs.get(("pocketbase", wl))
        rows.append([
            label,
            fmt_num(l and l["rps"]),
            fmt_num(p and p["rps"]),
            ratio(l and l["rps"], p and p["rps"]),
            lat(l),
            lat(p),
            ratio(l and l["p99"], p and p["p99"]),
        ])
    h = runs.get(("lintel", "health"))
    g = runs.get(("lintel", "get"))
    if h:
        rows.append([
            "lintel GET /v1/health (ceiling)",
            fmt_num(h["rps"]), "-", "-",
            f"{h['p50']:.2f} / {h['p99']:.2f}", "-", "-",
        ])
        rows.append(["lintel get-by-id / health", ratio(g and g["rps"], h["rps"]), "-", "-", "-", "-", "-"])

    mem_stages = [
        ("start", "idle, just started (empty)"),
        ("seeded", "idle, after seeding"),
        ("after", "after the load"),
        ("peak", "peak (VmHWM)"),
    ]
    mem_header = ["resident memory (VmRSS)", "lintel MB", "pb MB", "ratio"]
    mem_rows = []
    for stage, label in mem_stages:
        l, p = mem.get(("lintel", stage)), mem.get(("pocketbase", stage))
        mem_rows.append([label, fmt_num(l, 1), fmt_num(p, 1), ratio(l, p)])

    # Lintel on PostgreSQL against Lintel on SQLite and PocketBase.
    pg_header = [
        "workload", "lintel-sqlite req/s", "lintel-pg req/s", "pg/sqlite",
        "pb req/s", "pg/pb", "lintel-pg p50/p99 ms",
    ]
    pg_rows = []
    for wl, label in workloads + [("health", "GET /v1/health (ceiling, Lintel only)")]:
        s, g, p = runs.get(("lintel", wl)), runs.get(("lintel-pg", wl)), runs.get(("pocketbase", wl))
        pg_rows.append([
            label,
            fmt_num(s and s["rps"]),
            fmt_num(g and g["rps"]),
            ratio(g and g["rps"], s and s["rps"]),
            fmt_num(p and p["rps"]),
            ratio(g and g["rps"], p and p["rps"]),
            lat(g),
        ])
    pg_mem_header = ["resident memory (VmRSS)", "lintel-sqlite MB", "lintel-pg MB", "pg/sqlite", "pb MB", "pg/pb"]
    pg_mem_rows = []
    for stage, label in mem_stages:
        s, g, p = mem.get(("lintel", stage)), mem.get(("lintel-pg", stage)), mem.get(("pocketbase", stage))
        pg_mem_rows.append([label, fmt_num(s, 1), fmt_num(g, 1), ratio(g, s), fmt_num(p, 1), ratio(g, p)])

    problems = []
    for (side, wl), r in sorted(runs.items()):
        if r["non2xx"] or r["sockerr"]:
            problems.append(
                f"{side} {wl}: {r['non2xx']} non-2xx answers and {r['sockerr']} socket errors "
                f"out of {r['n']} requests -- its figures are not valid"
            )

    def table(hdr, body):
        widths = [max(len(str(r[i])) for r in [hdr] + body) for i in range(len(hdr))]
        line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(hdr), sep] + [line(r) for r in body])

    conf = ", ".join(f"{k}={v}" for k, v in info.items())
    out = [f"Settings: {conf}"]
    if has_main:
        if has_pg and "lintel" in sides:
            out += ["", "Lintel on SQLite (lintel) against PocketBase (pb):"]
        elif has_pg:
            out += ["", "PocketBase (pb); Lintel ran on PostgreSQL only (below):"]
        out += ["", table(header, rows), "", table(mem_header, mem_rows)]
    if has_pg:
        out += [
            "",
            "Lintel on PostgreSQL (lintel-pg) against Lintel on SQLite and PocketBase (pb):",
            "",
            table(pg_header, pg_rows),
            "",
            table(pg_mem_header, pg_mem_rows),
            "",
            "- lintel-pg memory is Lintel's own RSS only: the PostgreSQL server's processes are not counted.",
            "- During the lintel-pg runs the PostgreSQL server shares the same cores as Lintel and wrk;",
            "  Lintel's read cache runs on PostgreSQL too (kept in step across instances by LISTEN/NOTIFY).",
        ]
    if problems:
        out += ["", "WARNING:"] + [f"- {p}" for p in problems]
    text = "\n".join(out) + "\n"
    print(text)
    with open(md_out, "w") as f:
        f.write(text)


def main(argv):
    if len(argv) < 2:
        die(__doc__)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "free-port":
            print(free_port(int(args[0])))
        elif cmd == "wait-ready":
            wait_ready(args[0], int(args[1]), float(args[2]))
        elif cmd == "setup-lintel":
            setup_lintel(args[0], args[1], int(args[2]), args[3])
        elif cmd == "setup-pocketbase":
            setup_pocketbase(args[0], args[1], args[2], int(args[3]), args[4], *args[5:6])
        elif cmd == "report":
            report(args[0], args[1])
        else:
            die(f"unknown command {cmd}\n{__doc__}")
    except StepError as e:
        die(str(e))


if __name__ == "__main__":
    main(sys.argv)
