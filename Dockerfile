# cefmp4: upload growing MP4 recordings to S3 while they are recorded.
#   docker build -t cefmp4 .    (docker-compose.yml runs it with MinIO and Redis)
FROM python:3.12.8-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ffmpeg provides ffprobe (durations for the metadata JSON); dumb-init runs as PID 1 so
# SIGTERM reaches cefmp4 and zombies (ffprobe children) are reaped.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg dumb-init \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric UID/GID: Kubernetes' runAsNonRoot can verify it, and the manifests in
# deploy/kubernetes/ name it (runAsUser: 10001).
RUN groupadd --system --gid 10001 cefmp4 \
    && useradd --system --uid 10001 --gid cefmp4 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin cefmp4

WORKDIR /app
# The lock first, so the dependency layer is rebuilt only when it changes. Exact versions
# with hashes (scripts/lock); cefmp4 itself then adds no dependency of its own.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps . \
    && mkdir -p /data/input-videos /data/state \
    && chown -R cefmp4:cefmp4 /data

ENV WATCH_DIR=/data/input-videos \
    STATE_DIR=/data/state \
    PROM_PORT=8000
VOLUME ["/data/input-videos", "/data/state"]
EXPOSE 8000

USER 10001:10001

# No curl in the image: Python's urllib asks /healthz. PROM_PORT=0 disables the server,
# and then there is nothing to ask.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('PROM_PORT', '8000'); sys.exit(0) if port == '0' else urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4)"]

ENTRYPOINT ["dumb-init", "--"]
CMD ["cefmp4", "run"]
