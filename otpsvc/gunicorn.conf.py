"""gunicorn settings for ``otpsvc serve`` (and the container image), from the environment.

PORT (default 8080) and WEB_CONCURRENCY (default 2 workers) follow the usual platform
conventions; OTPSVC_WORKER_THREADS (default 12) is the threads of each worker; GUNICORN_CMD_ARGS
overrides any setting here, as gunicorn itself defines.

The worker is gthread: a start spends most of its time waiting for a voice provider (0.2-2 s,
sometimes until the read timeout), and a thread waiting on a socket holds no CPU and no GIL, so
one worker overlaps many such waits while its other threads answer checks and probes. argon2
runs in C with the GIL released, so threads still use every core for it (docs/scaling.md).
"""

import os
import shutil
import tempfile

# prometheus-client's multiprocess mode: one directory for every worker's metric files, set
# before the workers fork (they inherit it); a fresh one per server unless the operator set it,
# removed when the server exits (see on_exit).
_OWN_METRICS_DIR = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _OWN_METRICS_DIR = tempfile.mkdtemp(prefix="otpsvc-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _OWN_METRICS_DIR

bind = [f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"]  # noqa: S104
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gthread"
threads = int(os.environ.get("OTPSVC_WORKER_THREADS", "12"))
# A start may wait on every provider of a route in turn (connect + read timeouts each).
timeout = 75
# On SIGTERM a worker stops accepting and finishes what it holds, a start waiting on a provider
# included; the pod's terminationGracePeriodSeconds covers the preStop pause plus this.
graceful_timeout = 30
keepalive = 5
# Every line on one stream, as JSON (otpsvc.serving.RedactingLogger): gunicorn's own, the access
# log (callback tokens and numbers redacted) and the service's. --access-logfile /dev/null
# turns the access log off.
accesslog = "/dev/stderr"
errorlog = "-"
logger_class = "otpsvc.serving.RedactingLogger"
# No control socket (gunicorn 25.1+): nothing manages the server through it here, and under a
# read-only root it fails at every start with an ERROR line. Older gunicorn ignores the setting.
control_socket_disable = True


def post_fork(server: object, worker: object) -> None:
    """Each worker sets up its own tracing, after the fork (exporter threads do not survive one)."""
    from otpsvc.telemetry import setup_from_environment

    setup_from_environment()


def on_exit(server: object) -> None:
    """The metrics directory this server made goes with it (an operator's own stays)."""
    if _OWN_METRICS_DIR is not None:
        shutil.rmtree(_OWN_METRICS_DIR, ignore_errors=True)


def child_exit(server: object, worker: object) -> None:
    """A worker that exits is marked dead, so its gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined,no-untyped-call]


def on_starting(server: object) -> None:
    """Every setting as the workers will load it (see on_reload)."""
    _accept_settings(server, reloading=False)


def on_reload(server: object) -> None:
    """SIGHUP: every setting is read again here, in the master, before any new worker starts:
    the environment, each ``*_FILE`` secret (a Kubernetes Secret volume updates in place) and
    the client file. A good set is what the new workers load (gunicorn then stops the old ones
    gracefully); a bad one is logged with its problems, and new workers (these, and any that
    replaces a worker that died) load the last good set, so the service keeps serving."""
    _accept_settings(server, reloading=True)


def _accept_settings(server: object, *, reloading: bool) -> None:
    from otpsvc import metrics
    from otpsvc.config import clients, load_settings, loading, prices
    from otpsvc.config.secrets import read_secret_files
    from otpsvc.errors import ConfigError

    log = server.log  # type: ignore[attr-defined]
    previous = (loading.accepted_environment, clients.accepted_text, prices.accepted_text)
    problems: list[str] = []
    try:
        loading.accepted_environment = None
        env = read_secret_files(loading.environment(), problems)
        if problems:
            raise ConfigError(problems)
        # The files as they are now; workers forked later read these texts, not the files.
        clients.accepted_text = prices.accepted_text = None
        if env.get("OTPSVC_CLIENTS_FILE"):
            with open(env["OTPSVC_CLIENTS_FILE"], encoding="utf-8") as handle:
                clients.accepted_text = handle.read()
        if env.get("OTPSVC_PRICES_FILE"):
            with open(env["OTPSVC_PRICES_FILE"], encoding="utf-8") as handle:
                prices.accepted_text = handle.read()
        load_settings(env)
    except (OSError, ConfigError) as exc:
        loading.accepted_environment, clients.accepted_text, prices.accepted_text = previous
        said = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
        # In the metrics directory the workers share, so /metrics tells it until a good reload.
        metrics.SETTINGS_REFUSED.set(1)
        log.error(
            "settings refused%s, the workers keep the last good ones: %s",
            " on reload" if reloading else "",
            "; ".join(said),
        )
        return
    loading.accepted_environment = env
    metrics.SETTINGS_REFUSED.set(0)
    if reloading:
        log.info(
            "settings reloaded (environment, secret files, client file); "
            "the workers are being replaced"
        )
