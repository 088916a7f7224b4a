# Helpers shared by benches/load and benches/instr (sourced, not run).

free_ports() { # n -> n distinct free loopback ports
  python3 - "$1" <<'PY'
import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))
PY
}

# Fill a template's placeholders (each written between at-signs) from the caller's globals:
# ROOT BE1 BE2 MAXCONN ORIGIN_MAXCONN NOFILE ADMIN_PORT NGINX_NB_PORT, and the ports given.
render() { # template out [port] [tls_port] [cache_port]
  sed -e "s|@ROOT@|$ROOT|g" -e "s|@BE1@|$BE1|g" -e "s|@BE2@|$BE2|g" \
      -e "s|@MAXCONN@|$MAXCONN|g" -e "s|@ORIGIN_MAXCONN@|$ORIGIN_MAXCONN|g" -e "s|@NOFILE@|$NOFILE|g" -e "s|@ADMINPORT@|${ADMIN_PORT:-}|g" \
      -e "s|@PORT@|${3:-}|g" -e "s|@TLSPORT@|${4:-}|g" -e "s|@CACHEPORT@|${5:-}|g" \
      -e "s|@NBPORT@|${NGINX_NB_PORT:-}|g" "$1" >"$2"
}
