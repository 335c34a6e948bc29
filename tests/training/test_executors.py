"""The Ray executor gives the same bits as the in-process one, and survives dying workers."""

import json
import os
import shutil

import pytest

ray = pytest.importorskip("ray")

from helpers import checkpoint_shas, run_cli

from sisa.data.sources import load
from sisa.ops.delete import delete
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import InProcessExecutor, RayExecutor
from sisa.workspace.files import Workspace

SETTINGS = Settings(shards=3, slices=2, epochs=3, batch_size=64)


@pytest.fixture(scope="module")
def local_ray():
    ray.shutdown()
    # Workers inherit this environment: the fault hooks below read it.
    os.environ.pop("SISA_CRASH_AT", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def digits():
    return load("digits")


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("local") / "ws"
    train_workspace(path, digits, SETTINGS, executor=InProcessExecutor())
    return path


@pytest.mark.numerics
def test_ray_and_in_process_give_identical_checkpoints(local_ray, digits, local_reference, tmp_path):
    train_workspace(tmp_path / "ray", digits, SETTINGS, executor=RayExecutor())
    assert checkpoint_shas(tmp_path / "ray") == checkpoint_shas(local_reference)
    forget = [int(i) for i in digits.train.ids[::97]]
    shutil.copytree(local_reference, tmp_path / "local")
    delete(Workspace(tmp_path / "ray"), forget, executor=RayExecutor())
    delete(Workspace(tmp_path / "local"), forget, executor=InProcessExecutor())
    assert checkpoint_shas(tmp_path / "ray") == checkpoint_shas(tmp_path / "local")


def test_the_cli_runs_shards_on_ray(local_ray, local_reference, tmp_path):
    result = run_cli("train", "--workdir", tmp_path, "--executor", "ray", "--shards", "3", "--slices", "2",
                     "--epochs", "3", "--batch-size", "64", "--json")
    assert result.code == 0, result.err
    assert checkpoint_shas(tmp_path) == checkpoint_shas(local_reference)
    assert len([l for l in result.err.splitlines() if l.startswith("shard ")]) == 6
    assert not list(tmp_path.glob("**/ray*")) and not list(tmp_path.glob("**/session_*"))


def test_a_worker_killed_mid_shard_is_retried_with_identical_results(local_ray, digits, local_reference,
                                                                     tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    # Ray starts new workers with the driver's environment at the time they start.
    ray.shutdown()
    monkeypatch.setenv("SISA_CRASH_AT", "worker-mid-shard")
    monkeypatch.setenv("SISA_CRASH_ONCE", str(marker))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        train_workspace(tmp_path / "ws", digits, SETTINGS, executor=RayExecutor(retries=2))
    finally:
        ray.shutdown()
        monkeypatch.delenv("SISA_CRASH_AT")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert marker.exists(), "a worker was killed"
    assert checkpoint_shas(tmp_path / "ws") == checkpoint_shas(local_reference)


def test_a_failing_task_names_shard_and_slice_and_keeps_committed_checkpoints(local_ray, digits,
                                                                              local_reference, tmp_path,
                                                                              monkeypatch):
    shutil.copytree(local_reference, tmp_path / "ws")
    before = {p: p.read_bytes() for p in (tmp_path / "ws" / "checkpoints").rglob("*.pt")}
    ray.shutdown()
    monkeypatch.setenv("SISA_CRASH_AT", "raise-in-slice")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    forget = ",".join(str(int(i)) for i in digits.train.ids[:40:13])
    try:
        result = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", forget, "--executor", "ray")
    finally:
        ray.shutdown()
        monkeypatch.delenv("SISA_CRASH_AT")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    assert result.code == 1
    assert "training shard" in result.err and "slice" in result.err and "injected failure" in result.err
    manifest = json.loads((tmp_path / "ws" / "checkpoints" / "manifest.json").read_text())
    for record in manifest["checkpoints"]:  # what the manifest still names is whole and unchanged
        path = tmp_path / "ws" / "checkpoints" / record["file"]
        assert path.read_bytes() == before[path]
    status = run_cli("status", "--workdir", tmp_path / "ws", "--json").json
    assert status["deletions"]["pending"] == 1 and status["ok"]
    assert run_cli("recover", "--workdir", tmp_path / "ws", "--executor", "ray").code == 0
    assert run_cli("audit", "--workdir", tmp_path / "ws", "--replay").code == 0


def test_two_node_cluster_trains_and_deletes(digits, local_reference, tmp_path):
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    try:
        executor = RayExecutor(address=cluster.address)
        train_workspace(tmp_path / "ws", digits, SETTINGS, executor=executor)
        assert checkpoint_shas(tmp_path / "ws") == checkpoint_shas(local_reference)
        nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        assert len(nodes) == 2
        forget = [int(i) for i in digits.train.ids[::101]]
        delete(Workspace(tmp_path / "ws"), forget, executor=executor)
        shutil.copytree(local_reference, tmp_path / "local")
        delete(Workspace(tmp_path / "local"), forget, executor=InProcessExecutor())
        assert checkpoint_shas(tmp_path / "ws") == checkpoint_shas(tmp_path / "local")
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_auto_keeps_small_or_single_shard_work_in_process(digits, tmp_path):
    from sisa.training.executors import AutoExecutor
    from sisa.training.jobs import DataSpec, ShardJob

    def jobs(n, rows, model="mlp", shape=(1, 8, 8)):
        settings = SETTINGS.replace(model=model, epochs=5)
        return [ShardJob(str(tmp_path), s, settings, DataSpec(shape, "uint8", 1.0, 10), (("f", "x"),),
                         slice_rows=(rows, rows)) for s in range(n)]

    auto = AutoExecutor()
    assert isinstance(auto.choose(jobs(5, 150)), InProcessExecutor)            # digits-sized
    assert isinstance(auto.choose(jobs(1, 30000, "cnn", (1, 28, 28))), InProcessExecutor)  # one shard
    assert isinstance(auto.choose(jobs(8, 3750, "cnn", (1, 28, 28))), RayExecutor)
    assert isinstance(AutoExecutor(address="127.0.0.1:1").choose(jobs(1, 10)), RayExecutor)


LOCAL_RAY_SCRIPT = """
import json, sys
def listening():
    out = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":
                out.add(local)
    return out
before = listening()
from sisa.training.executors import _ensure_ray, _ray
ray = _ray()
_ensure_ray(ray, None)
after = listening() - before
ray.shutdown()
print(json.dumps(sorted(after)))
"""


def _is_loopback(hex_address: str) -> bool:
    """Whether a /proc/net/tcp{,6} local address is a loopback one (127.0.0.0/8 or ::1)."""
    host = hex_address.rsplit(":", 1)[0]
    if len(host) == 8:  # IPv4, bytes in little-endian order: 127.x.x.x ends in 7F
        return host.endswith("7F")
    mapped_v4 = host.startswith("0000000000000000FFFF0000") and host.endswith("7F")
    return host == "00000000000000000000000001000000" or mapped_v4


def test_a_local_ray_instance_listens_on_loopback_only():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", LOCAL_RAY_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    opened = json.loads(done.stdout.strip().splitlines()[-1])
    assert opened, "Ray opened no listening sockets?"
    assert all(_is_loopback(a) for a in opened), opened


@pytest.mark.numerics
def test_a_vectorised_group_runs_as_one_ray_task(local_ray, digits, tmp_path):
    settings = SETTINGS.replace(vectorise=2)  # groups {0, 1} and {2}
    train_workspace(tmp_path / "local", digits, settings, executor=InProcessExecutor())
    train_workspace(tmp_path / "ray", digits, settings, executor=RayExecutor())
    assert checkpoint_shas(tmp_path / "ray") == checkpoint_shas(tmp_path / "local")
    forget = [int(i) for i in digits.train.ids[::150]]
    delete(Workspace(tmp_path / "ray"), forget, executor=RayExecutor())
    delete(Workspace(tmp_path / "local"), forget, executor=InProcessExecutor())
    assert checkpoint_shas(tmp_path / "ray") == checkpoint_shas(tmp_path / "local")
