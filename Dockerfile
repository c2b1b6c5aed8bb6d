# doudi: a multi-stage build. The builder compiles librdkafka (cmake) and the binary; the runtime
# image holds the binary, schemas/, connectors/ and policy/, runs as a non-root user and works with
# a read-only root filesystem (only /tmp is written; the chart mounts an emptyDir there).
FROM rust:1.95-bookworm AS build
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake libssl-dev libcurl4-openssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
COPY schemas ./schemas
RUN cargo build --release --locked --bin doudi

FROM debian:bookworm-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="doudi" \
      org.opencontainers.image.description="兜底: the data exchange of a provincial social-assistance system" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="NOASSERTION" \
      org.opencontainers.image.source="https://example.invalid/doudi"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libcurl4 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 doudi \
 && useradd --system --uid 10001 --gid doudi --home-dir /opt/doudi --shell /usr/sbin/nologin doudi
WORKDIR /opt/doudi
COPY --from=build /src/target/release/doudi /usr/local/bin/doudi
COPY schemas ./schemas
COPY connectors ./connectors
COPY policy ./policy
USER 10001:10001
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/doudi"]
CMD ["--help"]
