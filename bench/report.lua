-- Shared by the wrk scripts (loaded with dofile): at the end of a run, print
-- one machine-readable line that bench/run.sh parses. Latencies are in
-- microseconds; wrk counts answers with status >= 400 as non2xx.
function done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d rps=%.2f p50_us=%.0f p99_us=%.0f non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration, summary.requests / secs,
    latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
