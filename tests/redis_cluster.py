"""A real three-node Redis Cluster (no replicas) on ephemeral ports, for cluster-safety tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from redis_process import RedisProcess


class RedisCluster:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.nodes: list[RedisProcess] = []
        for i in range(nodes):
            d = workdir / f"node{i}"
            d.mkdir()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", str(d / "nodes.conf")]
            self.nodes.append(RedisProcess(d, extra, cluster_bus=True))

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed")
        try:
            for node in self.nodes:
                node.start()
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            deadline = time.monotonic() + 30
            while not all(self._ok(cli, p) for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _ok(cli: str, port: int) -> bool:
        out = subprocess.run(
            [cli, "-p", str(port), "cluster", "info"], capture_output=True, text=True, timeout=10
        ).stdout
        return "cluster_state:ok" in out

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
