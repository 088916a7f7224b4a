# Measurement helpers of benches/load, sourced by it: memory and connection-scale steps,
# CPU and system-call counters, the wrk/ab/h2load runners that print a scenario's row, and
# the route-scale steps. They read the main script's settings (ROOT, TARGETS, LOAD_CPU,
# PROXY_CPU, DURATION, WARMUP, SC_* of the current scenario) when called, not when sourced.
# shellcheck shell=bash

# Memory: VmRSS of a process and its children (nginx: master + worker)
rss_kb() {
  local pid sum=0 v
  for pid in "$1" $(descendants "$1"); do
    v=$(awk '/^VmRSS:/ {print $2}' /proc/"$pid"/status 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# CPU: utime+stime in clock ticks of a process and its descendants (nginx: master + workers);
# with "user", utime alone
cpu_ticks() { # pid [user]
  local pid sum=0 v field='$14 + $15'
  [[ ${2:-} == user ]] && field='$14'
  for pid in "$1" $(descendants "$1"); do
    v=$(awk "{ print $field }" /proc/"$pid"/stat 2>/dev/null || true)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}

# Percent of the CPU ticks between two readings that were user time ("-" without any).
user_pct() { # ticks_before ticks_after user_before user_after
  awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN {
    if (b - a > 0) printf "%d", 100 * (d - c) / (b - a) + 0.5; else printf "-" }'
}

# The process a target's run is served by: the L4 proxies are separate processes, the nginx
# variants share one nginx, "direct" is the origin.
target_pid() { # target feature
  local t=${1%_nobuf}
  [[ $t == direct ]] && t=origin
  [[ $2 == routes ]] && t=routes
  [[ $2 == tcp && $t != origin ]] && t=$t-tcp
  echo "${PID_OF[$t]:-}"
}

# Busy and total ticks of both cores, from /proc/stat: "busy0 all0 busy1 all1".
core_ticks() {
  awk -v l="cpu$LOAD_CPU" -v p="cpu$PROXY_CPU" '$1 == l || $1 == p { all = 0; for (i = 2; i <= NF; i++) all += $i
    printf "%d %d ", all - $5 - $6, all }' /proc/stat
}

# Percent busy of CPU 0 (load generator and origin) and CPU 1 (the proxy) between two
# core_ticks readings, as "b0/b1": which side saturated, and so whose queue the latency shows.
core_busy() { # "before" "after"
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    t0 = y[2] - x[2]; t1 = y[4] - x[4]
    if (t0 <= 0 || t1 <= 0) { printf "-"; exit }
    printf "%d/%d", 100 * (y[1] - x[1]) / t0 + 0.5, 100 * (y[3] - x[3]) / t1 + 0.5 }'
}

# Microseconds of CPU per request between two tick counts.
cpu_us() { # ticks_before ticks_after requests
  awk -v a="$1" -v b="$2" -v n="$3" -v t="$CLK_TCK" 'BEGIN {
    if (n + 0 > 0) printf "%.2f", (b - a) / t * 1e6 / n; else printf "0" }'
}

measure_memory() { # target
  local t=$1 port pid out hp line
  port=$(target_port "$t" http)
  pid=${PID_OF[$t]}
  out="$ROOT/idle-$t.out"
  MEM_IDLE[$t]=$(rss_kb "$pid")
  MEM_STATUS[$t]=ok
  taskset -c "$LOAD_CPU" python3 "$D/idle_conns.py" 127.0.0.1 "$port" "$IDLE_CONNS" /ok >"$out" 2>&1 &
  hp=$!
  PIDS+=("$hp")
  local deadline=$((SECONDS + 120))
  until grep -q -E '^(READY|ERROR)' "$out" 2>/dev/null; do
    if ! kill -0 "$hp" 2>/dev/null || ((SECONDS > deadline)); then break; fi
    sleep 0.1
  done
  if ! grep -q '^READY' "$out"; then
    MEM_STATUS[$t]="failed: $(head -c 200 "$out" | tr '\n\t' '  ')"
    kill "$hp" 2>/dev/null || true
    wait "$hp" 2>/dev/null || true
    log "memory $t: ${MEM_STATUS[$t]}"
    return 0
  fi
  sleep 0.5 # let the proxy settle
  MEM_WITH[$t]=$(rss_kb "$pid")
  kill -USR1 "$hp"
  wait "$hp" || true
  line=$(grep '^ALIVE' "$out" || true)
  MEM_ALIVE[$t]=${line#ALIVE }
  [[ -n ${MEM_ALIVE[$t]} ]] || MEM_ALIVE[$t]=0
  log "memory $t: idle ${MEM_IDLE[$t]} KB, with $IDLE_CONNS conns ${MEM_WITH[$t]} KB ($(grep '^READY' "$out" | cut -d' ' -f3) to open), still open ${MEM_ALIVE[$t]}"
}

start_fresh() { # target -> sets FRESH_PID FRESH_PORT
  local t=$1 p1 p2 p3 p4
  read -r p1 p2 p3 p4 <<<"$(free_ports 4)"
  FRESH_PORT=$p1
  case $t in
    nginx)
      NGINX_NB_PORT=$p4 ROOT=$CS_ROOT render "$D/proxy-nginx.conf" "$CS_ROOT/nginx.conf" "$p1" "$p2" "$p3"
      start_bg fresh "$PROXY_CPU" nginx -p "$CS_ROOT" -e "$CS_ROOT/nginx.err" -c "$CS_ROOT/nginx.conf" ;;
    haproxy)
      ROOT=$CS_ROOT render "$D/proxy-haproxy.cfg" "$CS_ROOT/haproxy.cfg" "$p1" "$p2"
      start_bg fresh "$PROXY_CPU" haproxy -db -f "$CS_ROOT/haproxy.cfg" ;;
    stepstone)
      ROOT=$CS_ROOT stepstone_render "$D/stepstone.yaml" "$CS_ROOT/stepstone.yaml" "$p1" "$p2" "$p3"
      start_bg fresh "$PROXY_CPU" "$STEPSTONE_BIN" -c "$CS_ROOT/stepstone.yaml" ;;
  esac
  FRESH_PID=${PID_OF[fresh]}
  wait_port fresh "$FRESH_PORT" 30
  curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$FRESH_PORT/ok" || true
  sleep 0.5
}

stop_fresh() { # target
  local sig=TERM
  [[ $1 == stepstone ]] && sig=INT # Pingora: SIGTERM waits for a graceful shutdown
  stop_pids -"$sig" "$FRESH_PID"
  wait "$FRESH_PID" 2>/dev/null || true
}

measure_conns() { # target mode n
  local t=$1 mode=$2 n=$3 port pid out hp line
  if ((n + 1000 > NOFILE)); then
    printf '%s\t%s\t%s\tskipped: open-file limit %s\t0\t0\t0\t0\t0\n' "$t" "$mode" "$n" "$NOFILE" >>"$ROOT/conns.tsv"
    log "conns $t $mode $n: skipped, the open-file limit is $NOFILE"
    return 0
  fi
  start_fresh "$t"
  port=$FRESH_PORT pid=$FRESH_PID
  out="$ROOT/conns-$t-$mode-$n.out"
  taskset -c "$LOAD_CPU" python3 "$D/idle_conns.py" 127.0.0.1 "$port" "$n" /ok --mode "$mode" \
    --pid "$pid" --settle 2.5 >"$out" 2>&1 &
  hp=$!
  PIDS+=("$hp")
  local deadline=$((SECONDS + 180))
  until grep -q -E '^(READY|ERROR)' "$out" 2>/dev/null; do
    if ! kill -0 "$hp" 2>/dev/null || ((SECONDS > deadline)); then break; fi
    sleep 0.2
  done
  if ! grep -q '^READY' "$out"; then
    printf '%s\t%s\t%s\tfailed: %s\t0\t0\t0\t0\t0\n' "$t" "$mode" "$n" "$(head -c 120 "$out" | tr '\n\t' '  ')" >>"$ROOT/conns.tsv"
    kill "$hp" 2>/dev/null || true
    wait "$hp" 2>/dev/null || true
    log "conns $t $mode $n: failed: $(head -c 200 "$out")"
    stop_fresh "$t"
    return 0
  fi
  kill -USR1 "$hp"
  wait "$hp" || true
  stop_fresh "$t"
  read -r _ before after per < <(grep '^RSS' "$out")
  read -r _ _ secs < <(grep '^READY' "$out")
  line=$(grep '^ALIVE' "$out" || true)
  printf '%s\t%s\t%s\tok\t%s\t%s\t%s\t%s\t%s\n' "$t" "$mode" "$n" "$before" "$after" "$per" "${line#ALIVE }" "${secs%s}" >>"$ROOT/conns.tsv"
  log "conns $t $mode $n: RSS $before -> $after KB, $per KB/conn, ${line#ALIVE } still open, ${secs} to open"
}

# Parse `wrk --latency` output -> "status rps p50_ms p99_ms detail"
parse_wrk() { # file
  awk '
    function ms(v) {
      if (v ~ /us$/) return v * 0.001
      if (v ~ /ms$/) return v + 0
      if (v ~ /m$/)  return v * 60000
      if (v ~ /s$/)  return v * 1000
      return v + 0
    }
    /^Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    / requests in / { reqs = $1 }
    /Socket errors:/ { gsub(",", ""); sockerr = $4 + $6 + $8 + $10; errs = $3 " " $4 " " $5 " " $6 " " $7 " " $8 " " $9 " " $10 }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    END {
      status = "ok"; detail = "-"
      if (rps == "" || reqs == "" || reqs + 0 == 0) { status = "failed"; detail = "no-result" }
      else if (sockerr + 0 > 0 || non2xx + 0 > 0) {
        status = "invalid"
        detail = "non2xx=" (non2xx + 0) ",socket:" errs
        gsub(" ", "_", detail)
      }
      printf "%s %s %s %s %s\n", status, rps + 0, p50 + 0, p99 + 0, detail
    }' "$1"
}

syscalls_start() { # pid -> sets SYSC_PERF and SYSC_FILE
  SYSC_PERF="" SYSC_FILE="$ROOT/syscalls.$$.$RANDOM"
  ((SYSCALLS)) || return 0
  local pids
  pids=$(printf '%s,' "$1" $(descendants "$1"))
  perf stat -e "$SYSC_EVENTS" -x, -o "$SYSC_FILE" -p "${pids%,}" >/dev/null 2>&1 &
  SYSC_PERF=$!
  sleep 0.2 # attached before the run starts
}

# Not in a command substitution: perf is this shell's child, and its count is written only
# once it has been waited for.
syscalls_stop() { # requests -> sets SYSC: "calls/waits/switches" per request (waits:
  # epoll_wait and epoll_pwait, which a busy-polling loop makes many of; switches: context
  # switches of the target's threads), or "-"
  SYSC="-"
  [[ -n $SYSC_PERF ]] || return 0
  kill -INT "$SYSC_PERF" 2>/dev/null || true
  wait "$SYSC_PERF" 2>/dev/null || true
  SYSC=$(awk -F, -v n="$1" '$1 ~ /^[0-9]+$/ && n > 0 {
      if ($3 == "raw_syscalls:sys_enter") { all = $1 / n; seen = 1 }
      else if ($3 ~ /^context-switches/) switches = $1 / n
      else waits += $1 / n }
    END { if (!seen) printf "-"; else printf "%.2f/%.2f/%.3f", all, waits, switches }' "$SYSC_FILE" 2>/dev/null) || SYSC="-"
}

# The counters around one measured run of the target `pid`: its CPU (all and user), the
# origin's, both cores' busy ticks and, with perf, its system calls. counters_end sets
# COUNTERS to the runners' last five fields: "cpu_us_per_req busy origin_us_per_req user_pct
# syscalls_per_req". Not in a command substitution, for syscalls_stop's sake.
counters_begin() { # pid
  CNT_PID=$1
  syscalls_start "$CNT_PID"
  CNT_C0=$(cpu_ticks "$CNT_PID")
  CNT_U0=$(cpu_ticks "$CNT_PID" user)
  CNT_O0=$(cpu_ticks "${PID_OF[origin]}")
  CNT_K0=$(core_ticks)
}

counters_end() { # requests
  local c1 u1 o1 k1
  c1=$(cpu_ticks "$CNT_PID")
  u1=$(cpu_ticks "$CNT_PID" user)
  o1=$(cpu_ticks "${PID_OF[origin]}")
  k1=$(core_ticks)
  syscalls_stop "$1"
  COUNTERS="$(cpu_us "$CNT_C0" "$c1" "$1") $(core_busy "$CNT_K0" "$k1") $(cpu_us "$CNT_O0" "$o1" "$1") $(user_pct "$CNT_C0" "$c1" "$CNT_U0" "$u1") $SYSC"
}

run_wrk() { # target port out_prefix -> prints "status rps p50 p99 detail cpu_us_per_req busy origin_us_per_req user_pct syscalls_per_req"
  local url reqs
  url="$(feature_scheme "$SC_FEATURE")://127.0.0.1:$2$SC_PATH"
  local -a args=(-t1 -c"$SC_CONNS" --latency --timeout 2s "${SC_ARGS[@]}")
  if ((WARMUP > 0)); then
    taskset -c "$LOAD_CPU" wrk "${args[@]}" -d"${WARMUP}s" "$url" >"$3.warmup" 2>&1 || true
  fi
  counters_begin "$(target_pid "$1" "$SC_FEATURE")"
  if taskset -c "$LOAD_CPU" wrk "${args[@]}" -d"${DURATION}s" "$url" >"$3.out" 2>&1; then
    reqs=$(awk '/ requests in / { print $1 }' "$3.out")
    counters_end "${reqs:-0}"
    echo "$(parse_wrk "$3.out") $COUNTERS"
  else
    echo "failed 0 0 0 wrk-exit-$? 0 - 0 - -"
    syscalls_stop 0
  fi
}

# ab (ApacheBench): HTTP/1.0 with keep-alive asked for (-k), SC_CONNS requests in flight.
# Latency percentiles come from its CSV table (milliseconds, fractional).
run_ab() { # target port out_prefix -> prints "status rps p50 p99 detail cpu_us_per_req busy origin_us_per_req user_pct syscalls_per_req"
  local url="$(feature_scheme "$SC_FEATURE")://127.0.0.1:$2$SC_PATH"
  # -n bounds the run as well as -t: ab stops at whichever comes first
  local -a args=(-k -q -c"$SC_CONNS" -n 100000000 -s 2 "${SC_ARGS[@]}")
  if ((WARMUP > 0)); then
    taskset -c "$LOAD_CPU" ab "${args[@]}" -t"$WARMUP" "$url" >"$3.warmup" 2>&1 || true
  fi
  local reqs
  counters_begin "$(target_pid "$1" "$SC_FEATURE")"
  if ! taskset -c "$LOAD_CPU" ab "${args[@]}" -t"$DURATION" -e "$3.csv" "$url" >"$3.out" 2>&1; then
    echo "failed 0 0 0 ab-exit 0 - 0 - -"
    syscalls_stop 0
    return
  fi
  reqs=$(awk '/^Complete requests:/ { print $3 }' "$3.out")
  counters_end "${reqs:-0}"
  local pct
  pct=$(awk -F, '$1 == 50 { p50 = $2 } $1 == 99 { p99 = $2 } END { printf "%.3f %.3f", p50, p99 }' "$3.csv")
  awk -v pct="$pct" -v cpu="$COUNTERS" '
    /^Requests per second:/ { rps = $4 }
    /^Complete requests:/ { done = $3 }
    /^Failed requests:/ { failed = $3 }
    /^Non-2xx responses:/ { non2xx = $3 }
    /^Keep-Alive requests:/ { ka = $3 }
    END {
      status = "ok"; detail = "-"
      if (rps == "" || done + 0 == 0) { status = "failed"; detail = "no-result" }
      else if (failed + non2xx > 0 || ka + 0 < done * 0.99) {
        status = "invalid"; detail = "failed=" failed ",non2xx=" non2xx ",keepalive=" ka
      }
      printf "%s %s %s %s %s\n", status, rps + 0, pct, detail, cpu
    }' "$3.out"
}

# h2load: one connection per SC_CONNS, 10 concurrent streams each. Latency percentiles come
# from its per-request log (third column: microseconds until the end of the response).
run_h2load() { # target port out_prefix -> prints "status rps p50 p99 detail cpu_us_per_req busy origin_us_per_req user_pct syscalls_per_req"
  local url="https://127.0.0.1:$2$SC_PATH"
  local -a args=(-t1 -c"$SC_CONNS" -m10 "${SC_ARGS[@]}")
  if ((WARMUP > 0)); then
    taskset -c "$LOAD_CPU" h2load "${args[@]}" -D"$WARMUP" "$url" >"$3.warmup" 2>&1 || true
  fi
  local reqs
  counters_begin "$(target_pid "$1" "$SC_FEATURE")"
  if ! taskset -c "$LOAD_CPU" h2load "${args[@]}" -D"$DURATION" --log-file="$3.lat" "$url" >"$3.out" 2>&1; then
    echo "failed 0 0 0 h2load-exit 0 - 0 - -"
    syscalls_stop 0
    return
  fi
  reqs=$(awk '/^requests:/ { print $6 }' "$3.out")
  counters_end "${reqs:-0}"
  local pct
  pct=$(cut -f3 "$3.lat" | sort -n | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "0 0"; exit }
    i50 = int(NR * 0.50); if (i50 < 1) i50 = 1
    i99 = int(NR * 0.99); if (i99 < 1) i99 = 1
    printf "%.3f %.3f", v[i50] / 1000, v[i99] / 1000 }')
  awk -v pct="$pct" -v cpu="$COUNTERS" '
    /^finished in/ { for (i = 1; i <= NF; i++) if ($(i + 1) ~ /^req\/s/) rps = $i }
    /^requests:/ { done = $6; failed = $10; errored = $12; timeout = $14 }
    /^status codes:/ { s2 = $3 }
    END {
      status = "ok"; detail = "-"
      if (rps == "" || done + 0 == 0) { status = "failed"; detail = "no-result" }
      else if (failed + errored + timeout > 0 || s2 + 0 < done + 0) {
        status = "invalid"; detail = "failed=" failed ",errored=" errored ",timeout=" timeout ",2xx=" s2
      }
      printf "%s %s %s %s %s\n", status, rps + 0, pct, detail, cpu
    }' "$3.out"
}

# Reuse under keep-alive load: Stepstone's counters around its runs of the keep-alive HTTP
# scenarios only (new-connection and cache scenarios excluded), as "reused total".
reuse_counts() {
  curl -sf --max-time 3 "http://127.0.0.1:$ADMIN_PORT/metrics" 2>/dev/null | awk '
    $1 ~ /^stepstone_upstream_connections_reused_total($|\{)/ { r += $NF }
    $1 ~ /^stepstone_upstream_connections_total($|\{)/        { t += $NF }
    END { printf "%d %d\n", r, t }'
}

start_routes() { # hosts; a failure is written as the step's row
  local n=$1 conf="$ROOT/routes-$1.yaml" port pid t0 t1 t2 code
  read -r port <<<"$(free_ports 1)"
  python3 "$D/gen_config.py" "$port" "$BE1" "$BE2" "$n" >"$conf"
  t0=$(date +%s%N)
  "$STEPSTONE_BIN" -t -c "$conf" >"$ROOT/routes-$n.check" 2>&1 || {
    printf '%s\tfailed: -t\t0\t0\t0\t0\t0\t0\n' "$n" >>"$ROOT/routes.tsv"
    return 0
  }
  t1=$(date +%s%N)
  taskset -c "$PROXY_CPU" "$STEPSTONE_BIN" -c "$conf" >"$ROOT/routes-$n.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  local deadline=$((SECONDS + 30))
  while :; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Host: h$((n - 1)).scale.test" \
      "http://127.0.0.1:$port/ok" 2>/dev/null || true)
    [[ $code == 200 ]] && break
    if ((SECONDS > deadline)) || ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.01
  done
  t2=$(date +%s%N)
  if [[ $code != 200 ]]; then
    printf '%s\tfailed: no 200 (%s)\t0\t0\t0\t0\t0\t0\n' "$n" "$code" >>"$ROOT/routes.tsv"
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 0
  fi
  ROUTE_PORT[$n]=$port
  ROUTE_PID[$n]=$pid
  ROUTE_TIMES[$n]="$(awk -v a="$t0" -v b="$t1" -v c="$t2" 'BEGIN { printf "%.3f\t%.3f", (b - a) / 1e9, (c - b) / 1e9 }')"
}

measure_routes() { # hosts round
  local n=$1 r=$2 st rps p99 cpu ocpu
  SC_FEATURE=routes SC_PATH=/ok SC_CONNS=64 SC_ARGS=(-H "Host: h$((n - 1)).scale.test")
  PID_OF[routes]=${ROUTE_PID[$n]}
  read -r st rps _ p99 _ cpu _ ocpu _ _ < <(run_wrk routes "${ROUTE_PORT[$n]}" "$ROOT/wrk/routes-$n-r$r")
  unset 'PID_OF[routes]'
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$st" "$rps" "$p99" "$cpu" "${ROUTE_TIMES[$n]}" "$ocpu" >>"$ROOT/routes.tsv"
  log "routes $n (round $r/$ROUTE_ROUNDS): $rps req/s, p99 $p99 ms, $cpu us/req (origin $ocpu us/req)"
}
