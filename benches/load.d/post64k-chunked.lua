-- wrk script: POST a 64 KiB body as 16 chunks of 4 KiB (Transfer-Encoding: chunked, no
-- Content-Length), as a streaming client uploads. The request is written out here, since
-- wrk adds a Content-Length to any body it formats itself.
local chunk = "1000\r\n" .. string.rep("a", 4096) .. "\r\n"
local req = "POST /post HTTP/1.1\r\nHost: 127.0.0.1\r\n"
  .. "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
  .. string.rep(chunk, 16) .. "0\r\n\r\n"
request = function() return req end
