-- wrk script: POST a 64 KiB body (wrk adds Content-Length).
wrk.method = "POST"
wrk.body = string.rep("a", 65536)
wrk.headers["Content-Type"] = "application/octet-stream"
