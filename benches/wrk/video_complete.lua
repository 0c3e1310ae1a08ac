-- wrk script: sends each prepared delivery (body<TAB>signature per line) once, in order.
-- Run with one thread (-t1) so deliveries stay distinct; prints one JSON line at the end.
-- Arguments: the deliveries' file, then the webhook (video-complete unless given).
local prepared = {}
local next_index = 1

function init(args)
  local path = "/api/webhooks/" .. (args[2] or "video-complete")
  for line in io.lines(args[1]) do
    local body, signature = line:match("^(.-)\t(%x+)$")
    if body then
      prepared[#prepared + 1] = wrk.format("POST", path,
        { ["Content-Type"] = "application/json", ["X-Webhook-Signature"] = signature }, body)
    end
  end
end

function request()
  local r = prepared[next_index]
  next_index = next_index % #prepared + 1
  return r
end

function done(summary, latency, requests)
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"non_2xx":%d,"connect_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99),
    latency:percentile(99.9)))
end
