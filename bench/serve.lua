-- wrk script for bench/serve.py: POSTs one photo per request as a multipart form (field `file`),
-- the same bytes to singlepoint and to the Python peer.
-- Arguments: LIST_FILE MODE TAG, where LIST_FILE names one JPEG per line, TAG makes this run's
-- nonces its own (so no earlier run's answers can serve them), and MODE is
--   unique   every request is an input never sent before: a listed photo with a JPEG comment
--            segment carrying a nonce (the image decodes identically; its bytes are new)
--   repeat90 nine requests in ten repeat one of the first 100 photos; the tenth is new as above
-- At the end prints one line `WRKJSON {...}` with requests, seconds, errors and latencies (µs).

local boundary = "singlepoint-bench-boundary"
local files = {}
local mode = "unique"
local tag = ""
local counter = 0
local hot = 100
local hot_forms = {}
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  mode = args[2] or "unique"
  tag = args[3] or ""
  for path in io.lines(args[1]) do
    local f = assert(io.open(path, "rb"))
    files[#files + 1] = f:read("*a")
    f:close()
  end
  hot = math.min(hot, #files)
end

local function with_nonce(img, tag)
  local len = #tag + 2
  return img:sub(1, 2) .. "\255\254" .. string.char(math.floor(len / 256), len % 256) .. tag .. img:sub(3)
end

local function form(img)
  return "--" .. boundary .. "\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\n"
    .. "Content-Type: image/jpeg\r\n\r\n" .. img .. "\r\n--" .. boundary .. "--\r\n"
end

local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }

local function build_hot_requests()
  for i = 1, hot do
    hot_forms[i] = wrk.format("POST", nil, headers, form(files[i]))
  end
end

function request()
  counter = counter + 1
  local body
  if mode == "repeat90" and counter % 10 ~= 0 then
    -- Repeats reuse a prebuilt request, so the load generator spends no time building it.
    if #hot_forms == 0 then build_hot_requests() end
    return hot_forms[(counter % hot) + 1]
  end
  body = form(with_nonce(files[(counter % #files) + 1], string.format("sp-%s-%d-%d", tag, id, counter)))
  return wrk.format("POST", nil, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration / 1e6, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
