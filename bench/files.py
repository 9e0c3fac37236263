"""Files, measured the same way on Lintel and PocketBase: one large file uploaded
(multipart, streamed from disk) and downloaded (streamed, discarded), then many small
files uploaded and downloaded by concurrent clients. Prints one JSON object.

    python3 files.py <lintel|pocketbase> <base url> <big MB> <small count> <threads> <server pid>
"""

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse

BOUNDARY = "benchboundary7MA4YWxkTrZu0gW"


def rss_peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def conn(base):
    u = urllib.parse.urlsplit(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)


def multipart(field, filename, size, chunk=1 << 20, fill=b"x"):
    head = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nbench\r\n"
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    block = (fill * chunk)[:chunk]

    def body():
        yield head
        left = size
        while left > 0:
            n = min(left, chunk)
            yield block[:n]
            left -= n
        yield tail

    return len(head) + size + len(tail), body()


def create(c, side, length, body):
    path = "/v1/collections/docs/records" if side == "lintel" else "/api/collections/docs/records"
    c.request(
        "POST",
        path,
        body=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Length": str(length)},
    )
    r = c.getresponse()
    data = r.read()
    if r.status not in (200, 201):
        raise SystemExit(f"upload answered {r.status}: {data[:300]!r}")
    rec = json.loads(data)
    return rec["id"], rec["doc"]


def file_path(side, rid, name):
    if side == "lintel":
        return f"/v1/files/docs/{rid}/{name}"
    return f"/api/files/docs/{rid}/{name}"


def download(c, path):
    c.request("GET", path)
    r = c.getresponse()
    n = 0
    while True:
        chunk = r.read(1 << 20)
        if not chunk:
            break
        n += len(chunk)
    if r.status != 200:
        raise SystemExit(f"download answered {r.status}")
    return n


def main():
    side, base, big_mb, small, threads, pid = sys.argv[1:7]
    big = int(big_mb) * 1024 * 1024
    small, threads, pid = int(small), int(threads), int(pid)
    out = {"side": side, "rss_start_kib": rss_peak_kib(pid)}

    c = conn(base)
    length, body = multipart("doc", "big.bin", big)
    t = time.perf_counter()
    rid, name = create(c, side, length, body)
    dt = time.perf_counter() - t
    out["big_upload_mb_s"] = round(big / dt / 1e6, 1)
    out["rss_after_big_upload_kib"] = rss_peak_kib(pid)
    t = time.perf_counter()
    got = download(c, file_path(side, rid, name))
    dt = time.perf_counter() - t
    assert got == big, (got, big)
    out["big_download_mb_s"] = round(big / dt / 1e6, 1)
    out["rss_after_big_download_kib"] = rss_peak_kib(pid)

    made = []
    lock = threading.Lock()
    per = small // threads

    def uploader(i):
        c = conn(base)
        for k in range(per):
            size = 1024 + (k * 37) % 3072
            length, body = multipart("doc", f"small-{i}-{k}.txt", size, chunk=size, fill=b"hello world ")
            made_one = create(c, side, length, body)
            with lock:
                made.append(made_one)

    t = time.perf_counter()
    ts = [threading.Thread(target=uploader, args=(i,)) for i in range(threads)]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    dt = time.perf_counter() - t
    out["small_files"] = len(made)
    out["small_upload_per_s"] = round(len(made) / dt)

    def downloader(part):
        c = conn(base)
        for rid, name in part:
            download(c, file_path(side, rid, name))

    parts = [made[i::threads] for i in range(threads)]
    t = time.perf_counter()
    ts = [threading.Thread(target=downloader, args=(p,)) for p in parts]
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    dt = time.perf_counter() - t
    out["small_download_per_s"] = round(len(made) / dt)
    out["rss_peak_kib"] = rss_peak_kib(pid)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
