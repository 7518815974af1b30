# syntax=docker/dockerfile:1
# Build wheels for otpsvc and its dependencies, then install them into a slim image that runs
# gunicorn as an unprivileged user. Settings come from OTPSVC_* variables (see .env.example).

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
COPY wsgi.py ./
USER otpsvc
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
CMD ["gunicorn", "--bind", "0.0.0.0:8080", "--workers", "2", "--timeout", "30", "--access-logfile", "-", "wsgi:app"]
