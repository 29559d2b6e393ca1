"""A private multi-node Ray cluster on this machine: a head raylet and worker raylets, each with its own resources.

Run as a script by the ``ray_cluster`` fixture: it starts the cluster (its own temp dir and ports, the head's
dashboard on loopback for ``ray job submit``), prints one JSON line with the addresses, and shuts the cluster
down when its stdin closes. Running it in its own process keeps the test process's own Ray untouched, and its
shutdown stops exactly the processes it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from loopback import free_port


def _serve(workers: int, cpus_per_worker: int) -> None:
    import ray._private.utils
    from ray.cluster_utils import Cluster

    # Cluster records its address in Ray's machine-wide default temp dir for `ray.init("auto")`; this cluster is
    # reached only through the address it prints
    ray._private.utils.write_ray_address = lambda *a, **k: None
    temp_dir = tempfile.mkdtemp(prefix="bbst-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    dashboard_port = free_port()

    def own_ports() -> dict[str, int]:
        # Ray's fixed default ports (agent, metrics, runtime env) would collide with any other Ray on the machine
        return {name: free_port() for name in ("dashboard_agent_listen_port", "metrics_agent_port",
                                                 "metrics_export_port", "runtime_env_agent_port", "gcs_server_port",
                                                 "ray_client_server_port")}

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0,  # the head runs only the job's driver: every task runs on a worker raylet
        "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port,
        "temp_dir": temp_dir, "object_store_memory": 100 * 2**20, **own_ports()})
    for i in range(workers):
        ports = {k: v for k, v in own_ports().items() if k not in ("gcs_server_port", "ray_client_server_port")}
        cluster.add_node(num_cpus=cpus_per_worker, resources={f"bbst_worker_{i}": 1}, temp_dir=temp_dir,
                         object_store_memory=100 * 2**20, **ports)
    cluster.wait_for_nodes()
    print(json.dumps({"gcs_address": cluster.gcs_address, "dashboard": f"http://127.0.0.1:{dashboard_port}",
                      "temp_dir": temp_dir}), flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin
    finally:
        cluster.shutdown()


@contextmanager
def private_cluster(workers: int = 2, cpus_per_worker: int = 1, timeout: float = 120):
    """Start the cluster in a child process; yields its addresses; shuts it down on exit."""
    import shutil

    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(workers), str(cpus_per_worker)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the private Ray cluster did not start (exit code {proc.wait(timeout)})")
        info = json.loads(line)
        yield info
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if "info" in locals():
            shutil.rmtree(info["temp_dir"], ignore_errors=True)


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
