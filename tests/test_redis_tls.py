"""Redis over TLS with a private CA, and the Redis URL (with its password) from a file.

The bundled redis-server is built without TLS, so a local TLS terminator (Python's ``ssl``, a
self-signed CA made by ``openssl``) stands in front of it, as stunnel or a cloud Redis would.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from otpsvc.config import load_settings
from otpsvc.errors import ConfigError
from tests.conftest import KEY_A, Api, termii_env


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def tls_redis(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A rediss:// URL to the test Redis through a TLS terminator, and its CA certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    upstream = urlsplit(redis_url)
    listener = socket.create_server(("127.0.0.1", 0))
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                raw, _ = listener.accept()
                conn = context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                continue
            back = socket.create_connection((upstream.hostname, upstream.port))
            for a, b in ((conn, back), (back, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"rediss://127.0.0.1:{listener.getsockname()[1]}/0", cert
    stopped.set()
    listener.close()


def test_a_tls_redis_with_a_private_ca(make_app, openapi, tls_redis, termii):
    """rediss:// with OTPSVC_REDIS_TLS_CA_FILE: the server's certificate is verified against
    that CA, and the service works; without the CA the handshake fails and /readyz?deep=1 says
    503."""
    url, ca = tls_redis
    app = make_app(OTPSVC_REDIS_URL=url, OTPSVC_REDIS_TLS_CA_FILE=str(ca))
    api = Api(app, None, openapi)
    assert api.request("GET", "/readyz?deep=1").status_code == 200
    assert Api(app, KEY_A, openapi).start().status_code == 201

    untrusted = make_app(OTPSVC_REDIS_URL=url)
    assert Api(untrusted, None, openapi).request("GET", "/readyz?deep=1").status_code == 503


def test_tls_files_need_a_tls_url(redis_url: str, tmp_path: Path):
    """A CA file with a plain redis:// URL would be silently unused: refused, named."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    env = termii_env(redis_url, OTPSVC_REDIS_TLS_CA_FILE=str(ca))
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    assert "OTPSVC_REDIS_TLS_*: set only with a TLS URL" in str(info.value)


def test_the_redis_url_comes_from_a_file(redis_url: str, tmp_path: Path):
    """OTPSVC_REDIS_URL_FILE: the URL (and the password in it) from a mounted secret file."""
    env = termii_env(redis_url)
    path = tmp_path / "redis-url"
    path.write_text(env.pop("OTPSVC_REDIS_URL") + "\n")
    env["OTPSVC_REDIS_URL_FILE"] = str(path)
    assert load_settings(env).redis_url == redis_url
