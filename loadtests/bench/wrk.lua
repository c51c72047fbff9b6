-- vgate bench script for wrk: optional bearer token per request (cycled from a file,
-- threads take disjoint positions), optional pacing, and a JSON summary line at the end.
-- args: <token file or -> <pace ms per connection, 0 = none> <number of threads>
--       [<file of raw header lines, added as they are (repeated names allowed)>]
local threads = {}
local counter = 1

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

tokens = nil
wraps = 0
reused = 0
local n, idx, step, pace = 0, 0, 1, 0
local raw = ""

function init(args)
  local file = args[1]
  pace = tonumber(args[2]) or 0
  step = tonumber(args[3]) or 1
  wrk.headers["Accept"] = "application/json"
  if args[4] and args[4] ~= "-" then
    for line in io.lines(args[4]) do
      if #line > 0 then raw = raw .. line .. "\r\n" end
    end
  end
  if file and file ~= "-" then
    tokens = {}
    for line in io.lines(file) do
      if #line > 0 then tokens[#tokens + 1] = "Bearer " .. line end
    end
    n = #tokens
    idx = (id or 1) - 1
  end
end

local function with_raw(req)
  if raw == "" then return req end
  return req:sub(1, -3) .. raw .. "\r\n" -- before the blank line (these requests have no body)
end

if os.getenv("WRK_TOKENS") == "1" then
  function request()
    if idx >= n then
      idx = idx % n
      wraps = wraps + 1
    end
    if wraps > 0 then
      reused = reused + 1 -- this token was used before: a cache hit, not a fresh JWT
    end
    local t = tokens[idx + 1]
    idx = idx + step
    return with_raw(wrk.format(nil, nil, { ["Authorization"] = t }))
  end
elseif os.getenv("WRK_RAW") == "1" then
  function request()
    return with_raw(wrk.format())
  end
end

if os.getenv("WRK_PACE") == "1" then
  -- a random wait around the mean (integer ms), so that connections do not send in
  -- lock-step bursts: the offered load stays `connections / pace` per ms on average
  math.randomseed(os.time() + (id or 1) * 7919)
  function delay()
    return math.random(0, 2 * pace)
  end
end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("reused") or 0) end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d,' ..
    '"max":%d,"mean":%.1f,"reused":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, w))
end
