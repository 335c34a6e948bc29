"""A Ray cluster as real ones are: the worker node does not see the workspace folder.

A head node with no CPUs (so every task runs elsewhere) and a worker node started in its own
mount namespace, with a tmpfs mounted over the folder that holds the workspace. Training,
deletion, recovery and ``audit --replay`` through ``--address`` give the checkpoints
in-process runs give, bit for bit. Both nodes run on this machine; the cluster uses Ray's token
authentication with a token of the test's own.
"""

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from helpers import FAST, checkpoint_shas, copy_workspace, run_cli, training_ids

RAY = Path(sys.executable).with_name("ray")
SISA = Path(sys.executable).with_name("sisa")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_hide(folder: Path) -> str:
    """Why a mount namespace with a tmpfs over ``folder`` cannot be made here ('' if it can)."""
    if shutil.which("unshare") is None:
        return "the unshare command is not installed"
    done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs '{folder}'"],
                          capture_output=True, text=True)
    return "" if done.returncode == 0 else f"unshare -m with a tmpfs mount is not permitted: {done.stderr.strip()}"


class Cluster:
    def __init__(self, hidden: Path) -> None:
        self.hidden = hidden
        self.temp = Path(tempfile.mkdtemp(prefix="sisa-ray-", dir="/tmp"))  # short: Ray's socket paths
        self.port = _free_port()
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
        # a local Ray instance an earlier test started in this process set this for its own use
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.env.pop("SISA_CRASH_AT", None)
        self.worker = None
        self.address = ""

    def start(self) -> None:
        head = subprocess.run([RAY, "start", "--head", "--num-cpus=0", f"--port={self.port}",
                               "--include-dashboard=false", f"--temp-dir={self.temp}", "--disable-usage-stats"],
                              env=self.env, check=True, capture_output=True, text=True, timeout=120)
        found = re.search(r"ray start --address='([^']+)'", head.stdout + head.stderr)
        assert found, head.stdout + head.stderr
        self.address = found.group(1)
        worker = (f"mount -t tmpfs tmpfs '{self.hidden}' && exec '{RAY}' start --address={self.address} "
                  f"--num-cpus=2 --block --disable-usage-stats")
        self.worker = subprocess.Popen(["unshare", "-m", "sh", "-c", worker], env=self.env,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        self._wait_for_worker()

    def _wait_for_worker(self) -> None:
        probe = ("import ray, time\nray.init(address=%r, log_to_driver=False)\n"
                 "for _ in range(120):\n"
                 "    if ray.cluster_resources().get('CPU', 0) >= 2: break\n"
                 "    time.sleep(0.5)\n"
                 "else: raise SystemExit('no worker node')\n" % self.address)
        subprocess.run([sys.executable, "-c", probe], env=self.env, check=True, capture_output=True, timeout=120)

    def run(self, *args, crash_at: str = "") -> subprocess.CompletedProcess:
        env = dict(self.env, SISA_CRASH_AT=crash_at) if crash_at else self.env
        return subprocess.run([SISA, *map(str, args)], env=env, capture_output=True, text=True, timeout=300)

    def sees(self, path: Path) -> bool:
        """Whether a task (which runs on the worker node: the head has no CPUs) sees ``path``."""
        probe = ("import os, ray\nray.init(address=%r, log_to_driver=False)\n"
                 "print(ray.get(ray.remote(os.path.exists).remote(%r)))\n" % (self.address, str(path)))
        done = subprocess.run([sys.executable, "-c", probe], env=self.env, capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stdout.strip().splitlines()[-1] == "True"

    def stop(self) -> None:
        if self.worker is not None:
            os.killpg(self.worker.pid, 15)
            self.worker.wait(timeout=30)
        subprocess.run([RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    hidden = tmp_path_factory.mktemp("hidden")
    why = _can_hide(hidden)
    if why:
        pytest.skip(why)
    cluster = Cluster(hidden)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_train_delete_recover_and_replay_without_shared_storage(cluster, small_source, small_trained, tmp_path):
    ws = cluster.hidden / "ws"
    (cluster.hidden / "marker").write_text("here")
    assert (cluster.hidden / "marker").exists() and not cluster.sees(cluster.hidden / "marker")
    ray = ("--executor", "ray", "--address", cluster.address)

    trained = cluster.run("train", "--data", f"parquet:{small_source}", "--workdir", ws, *FAST, *ray)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert checkpoint_shas(ws) == checkpoint_shas(small_trained)

    reference = copy_workspace(small_trained, tmp_path)
    ids = training_ids(reference)
    first, second = ids[:2], ids[-3:]
    deleted = cluster.run("delete", "--workdir", ws, "--ids", ",".join(map(str, first)), *ray)
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert run_cli("delete", "--workdir", reference, "--ids", ",".join(map(str, first)),
                   "--executor", "local").code == 0
    assert checkpoint_shas(ws) == checkpoint_shas(reference)

    # the driver dies after the first retrained slice; recover finishes the deletion on the cluster
    crashed = cluster.run("delete", "--workdir", ws, "--ids", ",".join(map(str, second)), *ray,
                          crash_at="mid-retrain")
    assert crashed.returncode == -9
    recovered = cluster.run("recover", "--workdir", ws, *ray)
    assert recovered.returncode == 0, recovered.stderr[-2000:]
    assert run_cli("delete", "--workdir", reference, "--ids", ",".join(map(str, second)),
                   "--executor", "local").code == 0
    assert checkpoint_shas(ws) == checkpoint_shas(reference)

    replayed = cluster.run("audit", "--workdir", ws, "--replay")
    assert replayed.returncode == 0, replayed.stdout[-2000:] + replayed.stderr[-2000:]


def test_a_missing_token_is_named(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    started = time.monotonic()
    done = subprocess.run([SISA, "train", "--workdir", tmp_path / "ws", "--executor", "ray", "--address",
                           cluster.address, *FAST], env=dict(env, HOME=str(tmp_path)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 1
    assert "refused this process: it uses token authentication" in done.stderr
    assert "RAY_AUTH_MODE=token" in done.stderr and time.monotonic() - started < 120
    assert not (tmp_path / "ws" / "shards").exists()
