# The wgpu hub ("Redis API"): REST + SSE for clients, WebSocket for workers, on one Redis.
# Build context: the repository root (orchestrator.stack.images sends only what is needed).
#   docker build --network host -f compose/hub.Dockerfile --build-arg BASE_IMAGE=... .
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="wgpu hub" wgpu.role="hub"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONPATH=/opt/wgpu \
    PATH=/opt/venv/bin:${PATH} \
    OUTPUTS_DIR=/var/lib/wgpu/outputs
COPY compose/hub-requirements.txt /opt/wgpu/requirements.txt
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install -r /opt/wgpu/requirements.txt
COPY wgpu_protocol /opt/wgpu/wgpu_protocol
COPY redis_api /opt/wgpu/redis_api
RUN mkdir -p /var/lib/wgpu/outputs && /opt/venv/bin/python -c "import redis_api.server"
EXPOSE 8001
STOPSIGNAL SIGTERM
CMD ["python3", "-m", "redis_api"]
