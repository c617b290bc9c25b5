-- wrk script shared by the benchmarks (driven by benchmarks/_common.py:run_wrk).
-- Env: WRK_METHOD, WRK_BODY, WRK_HEADERS ("Name: value" lines),
--      WRK_USERS (>0: spread requests over that many X-Phoenix-User ids).
-- Prints one line "WRK_JSON {...}" with requests, rps, latency percentiles (ms) and a count per
-- HTTP status (so a 304 run can prove it got 304s, and an enqueue run that it got 202s).

local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY") or ""
local users = tonumber(os.getenv("WRK_USERS") or "0") or 0

local function parse_headers(raw)
  local h = {}
  for line in string.gmatch(raw or "", "[^\n]+") do
    local k, v = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
    if k then
      h[k] = v
    end
  end
  return h
end

local base_headers = parse_headers(os.getenv("WRK_HEADERS"))
if body ~= "" then
  base_headers["Content-Type"] = base_headers["Content-Type"] or "application/json"
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

statuses = {}
local counter = 0

function init(args)
  wrk.method = method
  wrk.headers = base_headers
  if body ~= "" then
    wrk.body = body
  end
end

if users > 0 then
  function request()
    counter = counter + 1
    local h = {}
    for k, v in pairs(base_headers) do
      h[k] = v
    end
    h["X-Phoenix-User"] = "bench-" .. tostring(tid) .. "-" .. tostring(counter % users)
    return wrk.format(method, nil, h, body ~= "" and body or nil)
  end
end

function response(status, headers, resp_body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local merged = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    if s then
      for k, v in pairs(s) do
        merged[k] = (merged[k] or 0) + v
      end
    end
  end
  local parts = {}
  for k, v in pairs(merged) do
    table.insert(parts, string.format('"%s": %d', k, v))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_s": %.3f, "rps": %.1f, ' ..
    '"p50_ms": %.2f, "p90_ms": %.2f, "p99_ms": %.2f, "max_ms": %.2f, "mean_ms": %.2f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(parts, ", ")))
end
