-- POST a new JSON record on each request.
-- Usage: wrk ... -s create.lua http://HOST:PORT -- PATH
--   PATH  e.g. /v1/collections/posts/records
dofile((os.getenv("BENCH_LUA_DIR") or "bench") .. "/report.lua")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local path
local n = 0
local categories = { "news", "tech", "life" }
local headers = { ["Content-Type"] = "application/json" }

function init(args)
  path = args[1]
  if not path then error("create.lua needs: -- PATH") end
  -- Distinct record numbers per thread (titles stay unique).
  n = (tid or 0) * 100000000
end

function request()
  n = n + 1
  local body = string.format(
    '{"title":"bench %d","body":"Created by wrk during the create workload.","views":%d,"published":%s,"category":"%s"}',
    n, n % 1000, (n % 2 == 0) and "true" or "false", categories[n % 3 + 1])
  return wrk.format("POST", path, headers, body)
end
