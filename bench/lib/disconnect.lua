-- wrk script for the native route: POST /api/whatsapp_sessions/<id>/disconnect.
--   wrk ... -s disconnect.lua URL -- walk FIRST LAST   each request takes the next id of
--                                                     FIRST..LAST (split between wrk threads),
--                                                     so no row is disconnected twice
--   wrk ... -s disconnect.lua URL -- cycle FIRST LAST N  round-robin over FIRST..LAST (split
--                                                     between the N wrk threads): rows that are
--                                                     already `disconnected` (check-only path)
--   wrk ... -s disconnect.lua URL -- fixed ID          the same id every time (one hot row)
-- When a walk runs past LAST it asks for an id that does not exist (404) and counts it as
-- "overflow": the run was faster than the rows seeded for it.
local NO_SUCH_ID = 9000000000000
local threads = {}

function setup(thread)
  thread:set("tindex", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  if mode == "walk" or mode == "cycle" then
    local first, last = tonumber(args[2]), tonumber(args[3])
    local n = tonumber(args[4]) or 1
    local span = math.floor((last - first + 1) / n)
    first_id = first + tindex * span
    next_id = first_id
    last_id = first_id + span - 1
  else
    next_id = tonumber(args[2])
    last_id = next_id
  end
  overflow, s2xx, s400, s404, s5xx, sother = 0, 0, 0, 0, 0, 0
  headers = { ["Content-Length"] = "0", ["Accept"] = "application/json" }
end

function request()
  local id = next_id
  if mode == "walk" then
    if id > last_id then
      overflow = overflow + 1
      id = NO_SUCH_ID
    else
      next_id = id + 1
    end
  elseif mode == "cycle" then
    next_id = id + 1
    if next_id > last_id then next_id = first_id end
  end
  return wrk.format("POST", "/api/whatsapp_sessions/" .. string.format("%d", id) .. "/disconnect",
    headers, "")
end

function response(status, hdrs, body)
  if status >= 200 and status < 300 then s2xx = s2xx + 1
  elseif status == 400 then s400 = s400 + 1
  elseif status == 404 then s404 = s404 + 1
  elseif status >= 500 then s5xx = s5xx + 1
  else sother = sother + 1 end
end

function done(summary, latency, requests)
  local t = { overflow = 0, s2xx = 0, s400 = 0, s404 = 0, s5xx = 0, sother = 0 }
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
    '"s2xx":%d,"s400":%d,"s404":%d,"s5xx":%d,"sother":%d,"overflow":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9),
    t.s2xx, t.s400, t.s404, t.s5xx, t.sother, t.overflow))
end
