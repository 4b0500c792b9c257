# The pg-proxy container image.
#
#   docker build -t portcullis/pg-proxy .
#   docker run --read-only -v ./etc:/etc/portcullis:ro -p 6432:6432 -p 9187:9187 portcullis/pg-proxy
#
# The build stage compiles on Debian (libclang for PostgreSQL's parser); the
# image is distroless (glibc, CA certificates, no shell), runs as a non-root
# user, and needs no writable path but the audit log's directory when
# [audit] is on (mount a volume there). The configuration is mounted at
# /etc/portcullis: gateway.toml, and the files it names.

FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p pg-proxy \
 && strip target/release/pg-proxy \
 && target/release/pg-proxy --version

# A Debian image with pg-proxy and a shell, for one-shot jobs (making
# development keys and secrets in deploy/compose.yaml): `--target tools`.
FROM docker.io/library/debian:bookworm-slim AS tools
COPY --from=build /src/target/release/pg-proxy /usr/local/bin/pg-proxy
ENTRYPOINT []

# The gateway's image (the default target).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/pg-proxy /usr/local/bin/pg-proxy
# The distroless image's nonroot user (65532).
USER 65532:65532
WORKDIR /etc/portcullis
# The PostgreSQL port and the admin server's (metrics, health, approvals).
EXPOSE 6432 9187
ENV PORTCULLIS_CONFIG=/etc/portcullis/gateway.toml \
    PORTCULLIS_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/pg-proxy"]
CMD ["serve"]
