"""Local Redis Cluster and Sentinel deployments, from the bundled ``redis-server`` (6.2).

For the test suite and the benchmark: ``with LocalCluster() as cluster: cluster.url`` gives a
``redis+cluster://`` URL of 3 masters with one replica each; ``LocalSentinel`` a master, a
replica and 3 sentinels behind a ``redis+sentinel://`` URL. Everything listens on free loopback
ports, writes only to temporary directories and is stopped on exit. Node timeouts are short (1 s)
so that a failover takes seconds, not the production default of half a minute.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import redis

from otpsvc.dev.redis_server import Managed, RedisServer, bundled_executable, free_ports

NODE_TIMEOUT_MS = 1000


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too, below Redis's 55535 ceiling."""
    for _ in range(200):
        port = random.randint(20000, 45000)  # noqa: S311 - picking a port, not a secret
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _cli() -> str:
    return str(Path(bundled_executable()).with_name("redis-cli"))


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} within {timeout} s")


class LocalCluster(Managed):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    def __init__(self, masters: int = 3, replicas: int = 1) -> None:
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        alive = [n for n in self.nodes if n.process and n.process.poll() is None]
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in alive[:3])

    def start(self) -> Self:
        for _ in range(self.masters * (1 + self.replicas)):
            port = free_cluster_port()
            node = RedisServer(
                port,
                extra_args=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                    # A replica that lost its master takes over even if it lagged: the tests
                    # measure exactly what such a failover loses.
                    "--cluster-replica-validity-factor", "0",
                ),
            )  # fmt: skip
            self.nodes.append(node.start())
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(  # noqa: S603
            [_cli(), "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        _wait(self._healthy, 30, "the cluster did not come up")
        return self

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def _healthy(self) -> bool:
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with self.client(node.port) as c:
                info = c.execute_command("CLUSTER", "INFO")
                text = info if isinstance(info, str) else info.decode()
                if "cluster_state:ok" not in text:
                    return False
                if len(c.execute_command("CLUSTER", "NODES").splitlines()) < len(self.nodes):
                    return False
        return True

    def master_of(self, key: str) -> RedisServer:
        """The node that serves ``key``'s slot now."""
        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            with self.client(node.port) as c:
                slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
                for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise RuntimeError("no live node knows the slot map")

    def kill(self, node: RedisServer) -> None:
        """Kill a node the hard way (no shutdown save, no goodbye to the cluster)."""
        if node.process is not None:
            node.process.kill()
            node.process.wait()

    def wait_for_new_master(self, key: str, old: RedisServer, timeout: float = 30) -> RedisServer:
        _wait(lambda: self.master_of(key) is not old and self._healthy(), timeout, "no failover")
        return self.master_of(key)

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        self.nodes.clear()


class LocalSentinel(Managed):
    """A master, one replica and three sentinels watching them as ``service``."""

    def __init__(self, service: str = "otpsvc") -> None:
        self.service = service
        self.master: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self._dir: str | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self) -> Self:
        self._dir = tempfile.mkdtemp(prefix="otpsvc-sentinel-")
        self.master = RedisServer().start()
        self.replica = RedisServer(
            extra_args=("--replicaof", "127.0.0.1", str(self.master.port))
        ).start()
        # All three ports at once: a port chosen while the previous sentinel is still starting
        # could be chosen twice, and two sentinels on one port never agree.
        for port in free_ports(3):
            conf = Path(self._dir, f"sentinel-{port}.conf")
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self._dir}\n"
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {self.service} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {self.service} 5000\n"
                f"sentinel parallel-syncs {self.service} 1\n"
            )
            with Path(self._dir, f"sentinel-{port}.log").open("ab") as log:
                self._sentinels.append(
                    subprocess.Popen(  # noqa: S603
                        [bundled_executable(), str(conf), "--sentinel"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            self.sentinel_ports.append(port)
        _wait(self._replicating, 30, "the replica did not sync")
        _wait(self._sentinels_up, 30, "a sentinel did not start")
        _wait(self._watched, 60, "the sentinels did not agree")
        return self

    def _sentinels_up(self) -> bool:
        if any(process.poll() is not None for process in self._sentinels):
            raise RuntimeError(f"a sentinel exited: see {self._dir}")
        for port in self.sentinel_ports:
            with redis.Redis(port=port, socket_timeout=1) as c:
                c.ping()
        return True

    def _replicating(self) -> bool:
        assert self.replica is not None
        with redis.Redis(port=self.replica.port, decode_responses=True) as c:
            return bool(c.info("replication").get("master_link_status") == "up")

    def _watched(self) -> bool:
        for port in self.sentinel_ports:
            with redis.Redis(port=port, decode_responses=True) as c:
                state = c.sentinel_master(self.service)
                if int(state.get("num-other-sentinels", 0)) < 2:
                    return False
        return True

    def current_master_port(self) -> int:
        with redis.Redis(port=self.sentinel_ports[0], decode_responses=True) as c:
            _, port = c.sentinel_get_master_addr_by_name(self.service)
            return int(port)

    def kill_master(self) -> int:
        """Kill the current master the hard way; its port."""
        port = self.current_master_port()
        for server in (self.master, self.replica):
            if server is not None and server.port == port and server.process is not None:
                server.process.kill()
                server.process.wait()
        return port

    def wait_for_new_master(self, old_port: int, timeout: float = 30) -> int:
        _wait(lambda: self.current_master_port() != old_port, timeout, "no failover")
        return self.current_master_port()

    def close(self) -> None:
        for process in self._sentinels:
            process.terminate()
        for process in self._sentinels:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        self._sentinels.clear()
        for server in (self.replica, self.master):
            if server is not None:
                server.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
