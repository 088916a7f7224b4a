-- wrk script for benches/soak: a fixed request rate instead of wrk's flat-out loop.
-- wrk calls delay() after each response and waits that many milliseconds before the
-- connection's next request, so C connections with delay D ms give about C * 1000 / D
-- requests per second (a little less: the response time adds to each cycle; the soak
-- reports the rate actually reached). A delay of 0 runs flat out.
-- Usage: wrk ... -s throttle.lua URL -- DELAY_MS [BODY_BYTES]; with BODY_BYTES > 0 each
-- request is a POST of that many bytes (wrk adds Content-Length).
local ms = 0
function init(args)
  ms = tonumber(args[1]) or 0
  local n = tonumber(args[2]) or 0
  if n > 0 then
    wrk.method = "POST"
    wrk.body = string.rep("a", n)
    wrk.headers["Content-Type"] = "application/octet-stream"
  end
end
function delay()
  return ms
end
