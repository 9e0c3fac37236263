-- A plain GET of the URL given to wrk (list and health workloads).
dofile((os.getenv("BENCH_LUA_DIR") or "bench") .. "/report.lua")
