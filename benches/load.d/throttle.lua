-- wrk script for benches/soak: a fixed request rate instead of wrk's flat-out loop.
-- wrk calls delay() after each response and waits that many milliseconds before the
-- connection's next request, so C connections with delay D ms give about C * 1000 / D
-- requests per second (a little less: the response time adds to each cycle; the soak
-- reports the rate actually reached). Usage: wrk ... -s throttle.lua URL -- DELAY_MS
local ms = 0
function init(args)
  ms = tonumber(args[1]) or 0
end
function delay()
  return ms
end
