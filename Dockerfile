# syntax=docker/dockerfile:1
# Build wheels for otpsvc and its dependencies, then install them into a slim image that runs
# `otpsvc serve` (gunicorn with the packaged gunicorn.conf.py: gthread workers, a bulkhead for
# provider waits) as an unprivileged user. Settings come from OTPSVC_* variables (see
# .env.example); PORT, WEB_CONCURRENCY, OTPSVC_WORKER_THREADS and GUNICORN_CMD_ARGS tune the
# server. Secrets may be mounted as files: OTPSVC_SECRET_KEY_FILE=/run/secrets/...

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY otpsvc ./otpsvc
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin otpsvc
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels otpsvc && rm -rf /wheels
WORKDIR /app
USER otpsvc
ENV PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2).status != 200)"]
CMD ["otpsvc", "serve"]
