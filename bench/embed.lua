-- wrk script for bench/embed.py: POSTs OpenAI embedding requests, one text each, the same
-- bodies to singlepoint and to the Python peer.
-- Arguments: LIST_FILE MODE TAG, as serve.lua takes them; LIST_FILE holds one JSON body per
-- line, sent in turn (MODE and TAG are unused: the texts are distinct and the servers run
-- without a cache).
-- At the end prints one line `WRKJSON {...}` with requests, seconds, errors and latencies (µs).

local requests = {}
local counter = 0
local step = 1

-- Each wrk thread has its own Lua state: thread i of n sends bodies i, i+n, i+2n, ..., so no
-- two threads send the same text at once (the server would coalesce them into one run).
local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
  for _, t in ipairs(threads) do t:set("n", #threads) end
end

function init(args)
  counter = id or 0
  step = n or 1
  for body in io.lines(args[1]) do
    requests[#requests + 1] = wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
  end
end

function request()
  counter = counter + step
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
