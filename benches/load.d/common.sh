# Helpers shared by benches/load and benches/instr (sourced, not run).

free_ports() { # n -> n distinct free loopback ports, below the ephemeral range
  # Below it, so that no outgoing connection of the run (the harness's checks, the proxies'
  # connections to the origin) takes one as its local port before its server binds it: a
  # port from bind(0) is an ephemeral one, and a peer once failed to bind one that way.
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
ports, held = [], []
for _ in range(20000):
    if len(ports) == n:
        break
    p = random.randint(10000, lo - 1) if lo > 11000 else 0
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    p = s.getsockname()[1]
    if p in ports:
        s.close()
        continue
    held.append(s)
    ports.append(p)
if len(ports) < n:
    sys.exit(f"free_ports: found only {len(ports)} of {n} free ports")
print(" ".join(str(p) for p in ports))
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

stepstone_render() { # as render, for a Stepstone config; STEPSTONE_BUSY_POLL=off drops its busy poll
  render "$@"
  if [ "${STEPSTONE_BUSY_POLL:-on}" = off ]; then sed -i '/busy_poll/d' "$2"; fi
}

# Debian packages for the commands a harness needs: need_tool adds a package when its command
# is missing, install_needed installs them all at once (as root).
need_pkgs=()
need_tool() { command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); }
install_needed() {
  ((${#need_pkgs[@]})) || return 0
  mapfile -t need_pkgs < <(printf '%s\n' "${need_pkgs[@]}" | sort -u)
  log "installing missing packages: ${need_pkgs[*]}"
  ((EUID == 0)) || die "need root to install ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y "${need_pkgs[@]}"
}

# STEPSTONE_BIN, or else a release build of this checkout (CARGO_TARGET_DIR honoured).
stepstone_bin() { # what to say when there is none
  # STEPSTONE_PGO=1: measure the production build (scripts/build-pgo, about 20 minutes).
  if [[ -z ${STEPSTONE_BIN:-} && ${STEPSTONE_PGO:-0} == 1 ]]; then
    log "building stepstone: scripts/build-pgo (in $REPO)"
    STEPSTONE_BIN=$("$REPO/scripts/build-pgo") || die "scripts/build-pgo failed; $1"
  fi
  if [[ -z ${STEPSTONE_BIN:-} ]]; then
    local tdir=${CARGO_TARGET_DIR:-target}
    [[ $tdir == /* ]] || tdir="$REPO/$tdir"
    log "building stepstone: cargo build --release (in $REPO)"
    (cd "$REPO" && cargo build --release) || die "cargo build --release failed; $1"
    STEPSTONE_BIN="$tdir/release/stepstone"
  fi
  [[ -x $STEPSTONE_BIN ]] || die "stepstone binary not found at $STEPSTONE_BIN; $1"
}

descendants() { # pid -> all descendant pids
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}

# Stop processes and everything they started: SIG (default TERM) to all, KILL to what is left
# after 5 s. The descendants are listed first: a master killed before its workers leaves them
# to init, still listening (an nginx origin's worker outlived benches/instr that way).
stop_pids() { # [-SIG] pid...
  local sig=TERM pid all=() alive
  [[ ${1:-} == -* ]] && { sig=${1#-}; shift; }
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null || continue
    all+=("$pid" $(descendants "$pid"))
  done
  ((${#all[@]})) || return 0
  kill -"$sig" "${all[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    alive=0
    for pid in "${all[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  kill -KILL "${all[@]}" 2>/dev/null || true
}
