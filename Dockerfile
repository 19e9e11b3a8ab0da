# wald's container image: a release build, then a slim runtime with only the binary,
# the example pipelines and the settings for a container (listen on every address,
# data under /var/lib/wald).
#
#   docker build -t wald .
#   docker run -p 8080:8080 -v wald-data:/var/lib/wald wald
#
# The base images are arguments so that the image can be built from local ones (see
# scripts/container-image).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# librdkafka is built from source by rdkafka-sys (make, a C++ compiler, zlib).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The dependencies first, in a layer of their own that a change to wald's code keeps.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches/suite \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/suite/main.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src src
COPY benches benches
COPY migrations migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/wald /usr/local/bin/wald

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 wald \
    && useradd --system --uid 10001 --gid wald --home-dir /var/lib/wald --shell /usr/sbin/nologin wald \
    && mkdir -p /var/lib/wald \
    && chown wald:wald /var/lib/wald
COPY --from=build /usr/local/bin/wald /usr/local/bin/wald
COPY deploy/wald.toml /etc/wald/wald.toml
COPY pipelines /etc/wald/pipelines
ENV WALD_CONFIG=/etc/wald/wald.toml
WORKDIR /var/lib/wald
USER 10001:10001
VOLUME ["/var/lib/wald"]
EXPOSE 8080
ENTRYPOINT ["wald"]
CMD ["serve"]
