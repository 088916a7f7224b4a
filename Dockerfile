# Stepstone's container image. Two ways to build the same runtime stage:
#   docker build -t stepstone .
#       compiles in the Rust stage below (the default target, `runtime`), with profile-guided
#       optimization (scripts/build-pgo: an instrumented build, a training run against a local
#       nginx, the optimized build; ~20% fewer instructions per request). `--build-arg PGO=0`
#       builds a plain release binary, in about half the time;
#   cargo build --release --locked && docker build --target prebuilt -t stepstone .
#       copies a binary built on the host (STEPSTONE_BIN, default target/release/stepstone):
#       what CI does (scripts/container-test), with no Rust image to pull. The host must run
#       Debian bookworm or older glibc so the binary runs on the runtime image.
# Base images are pinned to dated tags; bump both deliberately.
ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG DEBIAN_IMAGE=debian:bookworm-20250520-slim

FROM ${RUST_IMAGE} AS build
ARG PGO=1
# cmake, pkg-config and the OpenSSL headers build the binary; the rest is PGO's training run
# (benches/load: nginx as the origin, wrk and h2load as the clients).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && if [ "$PGO" = 1 ]; then apt-get install -y --no-install-recommends \
      nginx libnginx-mod-stream wrk nghttp2-client procps util-linux python3 curl openssl; fi \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, against stub sources: this layer is reused until Cargo.toml or
# Cargo.lock change, so a source edit recompiles only Stepstone itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/select.rs && echo 'fn main() {}' > tests/it/main.rs \
 && cargo build --release --locked --bin stepstone \
 && rm -rf src benches tests
COPY src src
COPY benches benches
COPY tests tests
COPY conf conf
COPY scripts scripts
# COPY keeps the files' old mtimes; make cargo see that the stubs were replaced.
RUN touch src/main.rs src/lib.rs
# The PGO builds take their own flags, so they rebuild the dependencies too: the layer above
# caches only the plain build's.
RUN if [ "$PGO" = 1 ]; then scripts/build-pgo --out /src/stepstone; \
    else cargo build --release --locked --bin stepstone && cp target/release/stepstone /src/stepstone; fi

FROM ${DEBIAN_IMAGE} AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin stepstone \
 && mkdir -p /etc/stepstone /run/stepstone \
 && chown stepstone:stepstone /run/stepstone
COPY conf/container.yaml /etc/stepstone/stepstone.yaml
USER stepstone
# 8080: the web listener; 9900: admin (/healthz and /metrics open, the rest needs the token).
EXPOSE 8080 9900
# Set this when your config moves the admin listener.
ENV STEPSTONE_HEALTH_URL=http://127.0.0.1:9900/healthz
# /healthz answers 200 while serving and 503 through the drain after SIGTERM.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD curl -fsS "$STEPSTONE_HEALTH_URL" || exit 1
# SIGTERM: stop accepting, finish what is in flight (grace_period_seconds, 6 s in
# conf/container.yaml), exit 0 as soon as nothing is left. This fits `docker stop`'s default
# 10 s; with a longer grace period, give `docker run --stop-timeout` / `docker stop -t` more.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stepstone"]
CMD ["-c", "/etc/stepstone/stepstone.yaml"]

FROM base AS prebuilt
ARG STEPSTONE_BIN=target/release/stepstone
COPY ${STEPSTONE_BIN} /usr/local/bin/stepstone

FROM base AS runtime
COPY --from=build /src/stepstone /usr/local/bin/stepstone
