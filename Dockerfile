# Multi-stage build: compile with the full toolchain, run on a slim image as a non-root user.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY tests tests
COPY conf conf
RUN cargo build --release --locked --bin stepstone

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin stepstone \
 && mkdir -p /etc/stepstone /run/stepstone \
 && chown stepstone:stepstone /run/stepstone
COPY --from=build /src/target/release/stepstone /usr/local/bin/stepstone
COPY conf/container.yaml /etc/stepstone/stepstone.yaml
USER stepstone
EXPOSE 8080
# The admin listener of conf/container.yaml; /healthz needs no token and turns 503 on drain.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD curl -fsS http://127.0.0.1:9900/healthz || exit 1
# SIGTERM: stop accepting, finish in-flight requests within the grace period, exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/stepstone"]
CMD ["-c", "/etc/stepstone/stepstone.yaml"]
