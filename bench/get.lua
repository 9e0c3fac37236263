-- GET one record by a random id among the seeded ones.
-- Usage: wrk ... -s get.lua http://HOST:PORT -- IDS_FILE PATH_PREFIX
--   IDS_FILE     one id a line, written by bench.py's seeding step
--   PATH_PREFIX  e.g. /v1/collections/posts/records/ (the id is appended)
dofile((os.getenv("BENCH_LUA_DIR") or "bench") .. "/report.lua")

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local ids = {}
local prefix

function init(args)
  local file = args[1]
  prefix = args[2]
  if not file or not prefix then
    error("get.lua needs: -- IDS_FILE PATH_PREFIX")
  end
  for line in io.lines(file) do
    if #line > 0 then ids[#ids + 1] = line end
  end
  if #ids == 0 then error("no ids in " .. file) end
  math.randomseed(os.time() * 1000 + (tid or 0))
end

function request()
  return wrk.format("GET", prefix .. ids[math.random(#ids)])
end
