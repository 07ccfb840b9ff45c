# A Redis 7 image made from a local Debian base image, for hosts that cannot pull redis:7.
# Debian bookworm's redis-server (7.0) from the Debian mirror; `redis-cli` for the healthcheck.
#   docker build --network host -f compose/redis.Dockerfile --build-arg BASE_IMAGE=... compose
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="wgpu redis" wgpu.role="redis"
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data", "--appendonly", "yes", "--maxmemory-policy", "noeviction"]
