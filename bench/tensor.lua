-- wrk script for bench/tensor.py: POSTs Open Inference Protocol binary requests (JSON header
-- plus the raw FP32 tensor, `Inference-Header-Content-Length`), the same bytes to singlepoint
-- and to the Python peer.
-- Arguments: LIST_FILE MODE TAG, as serve.lua takes them; LIST_FILE names one request body per
-- line, each a distinct input, sent in turn (MODE and TAG are unused: the inputs are distinct
-- by construction and the servers run without a cache).
-- At the end prints one line `WRKJSON {...}` with requests, seconds, errors and latencies (µs).

local requests = {}
local counter = 0

function init(args)
  for path in io.lines(args[1]) do
    local f = assert(io.open(path, "rb"))
    local body = f:read("*a")
    f:close()
    -- The JSON header's length is the first line of the companion .len file.
    local lf = assert(io.open(path .. ".len", "r"))
    local n = lf:read("*l")
    lf:close()
    requests[#requests + 1] = wrk.format("POST", nil, {
      ["Content-Type"] = "application/octet-stream",
      ["Inference-Header-Content-Length"] = n,
    }, body)
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
