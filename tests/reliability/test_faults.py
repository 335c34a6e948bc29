"""Failed writes and kills at random moments never lose an acknowledged deletion."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from helpers import deleted_ids, run_cli, training_ids, tree

from sisa.workspace.files import Workspace


@pytest.mark.parametrize("where", ["write_checkpoint", "write_versioned"])
def test_a_failed_write_during_delete_is_reported_and_a_retry_finishes_it(ws, monkeypatch, where):
    ids = training_ids(ws)[:3]
    real = getattr(Workspace, where)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Workspace, where, disk_full)
    failed = run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, ids)))
    assert failed.code == 1 and "No space left on device" in failed.err and "Traceback" not in failed.err
    monkeypatch.setattr(Workspace, where, real)
    status = run_cli("status", "--workdir", ws, "--json")
    assert status.code == 0 and status.json["deletions"]["pending"] == 1  # recorded, not lost
    retry = run_cli("recover", "--workdir", ws, "--json")
    assert retry.code == 0
    again = run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, ids)), "--json")
    assert sorted(again.json["already_deleted"]) == ids
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0


def test_a_failed_write_during_train_leaves_the_folder_as_it_was(tmp_path, source, monkeypatch):
    (tmp_path / "ws").mkdir()
    before = tree(tmp_path / "ws")
    monkeypatch.setattr(Workspace, "write_shard_slices",
                        lambda self, *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    failed = run_cli("train", "--data", f"parquet:{source}", "--workdir", tmp_path / "ws", "--epochs", "1")
    assert failed.code == 1 and "No space left" in failed.err
    assert tree(tmp_path / "ws") == before


def _kill_loop(ws, rounds: int, seed: int) -> dict:
    """Delete a few ids per round with a `sisa delete` process, SIGKILL it at a random moment of
    its run, then let `sisa recover` finish what it recorded. Round 0 runs to the end: it is
    acknowledged, and its duration sets the range the later kill moments are drawn from."""
    rng = random.Random(seed)
    pool = training_ids(ws)
    rng.shuffle(pool)
    acknowledged, batches, killed, interrupted, whole_run = set(), [], 0, 0, None
    env = dict(os.environ, SISA_EXECUTOR="local")
    for round_ in range(rounds):
        batch = [pool.pop() for _ in range(rng.randint(1, 4))]
        batches.append(batch)
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "sisa", "delete", "--workdir", str(ws), "--json",
                                 "--ids", ",".join(map(str, batch))], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if round_ == 0:
            out, err = proc.communicate()
            assert proc.returncode == 0, err
            whole_run = time.monotonic() - started  # start-up is ~2 s, the deletion a second or two more
        else:
            time.sleep(rng.uniform(0.1, 0.8) * whole_run)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            killed += 1
            status = run_cli("status", "--workdir", ws, "--json")
            if status.code == 0 and status.json["deletions"]["pending"]:
                interrupted += 1  # killed after its request was recorded, before it was committed
        else:
            assert proc.returncode == 0, err
            assert sorted(json.loads(out)["deleted"]) == sorted(batch)
            acknowledged |= set(batch)
        recovered = run_cli("recover", "--workdir", ws)
        assert recovered.code == 0, recovered.err
    return {"acknowledged": acknowledged, "batches": batches, "killed": killed, "interrupted": interrupted}


def test_kills_at_random_moments_lose_no_acknowledged_deletion(ws):
    result = _kill_loop(ws, rounds=4, seed=1)
    print(f"{result['killed']} of 3 deletions killed, {result['interrupted']} of them after the request was "
          f"recorded; {len(result['acknowledged'])} ids acknowledged")
    assert result["killed"] >= 1, "no `sisa delete` was running when its kill came"
    _check_after_kills(ws, result)


@pytest.mark.slow
def test_at_least_twenty_random_kills(ws):
    result = _kill_loop(ws, rounds=31, seed=7)
    print(f"{result['killed']} of 30 deletions killed, {result['interrupted']} of them after the request was "
          f"recorded; {len(result['acknowledged'])} ids acknowledged")
    assert result["killed"] >= 20 and result["interrupted"] >= 5
    _check_after_kills(ws, result)


def _check_after_kills(ws, result):
    """Every acknowledged deletion holds, and every request is all or nothing."""
    audit = run_cli("audit", "--workdir", ws, "--replay", "--json")
    assert audit.code == 0, audit.json["problems"]
    remaining, ledger = set(training_ids(ws)), deleted_ids(ws)
    assert result["acknowledged"], "no deletion ran to the end"
    for i in sorted(result["acknowledged"]):
        assert i not in remaining, f"the acknowledged deletion of {i} came back"
        assert f"i:{i}" in ledger, f"the ledger lost the acknowledged deletion of {i}"
    for batch in result["batches"]:  # a killed request was either recorded whole, then finished, or not at all
        gone = [i not in remaining for i in batch]
        assert all(gone) or not any(gone), f"request {batch} was half done"
        assert [f"i:{i}" in ledger for i in batch] == gone, f"the ledger and the shards disagree on {batch}"
    status = run_cli("status", "--workdir", ws, "--json").json
    assert status["deletions"]["pending"] == 0
    assert status["deletions"]["deleted_ids"] == len(ledger)


def test_a_train_killed_at_random_moments_leaves_nothing_that_a_rerun_trips_on(tmp_path, source):
    rng = random.Random(3)
    ws = tmp_path / "ws"
    env = dict(os.environ, SISA_EXECUTOR="local")
    command = [sys.executable, "-m", "sisa", "train", "--data", f"parquet:{source}", "--workdir", str(ws),
               "--shards", "4", "--slices", "3", "--epochs", "3"]
    for _ in range(3):
        proc = subprocess.Popen(command + ["--force"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(2.5, 5.0))
        proc.kill()
        proc.communicate()
        status = run_cli("status", "--workdir", ws)
        assert status.code in (0, 1) and "Traceback" not in status.err
        if status.code == 0:  # the kill came after the commit: a whole workspace
            assert run_cli("audit", "--workdir", ws).code == 0
    rerun = subprocess.run(command + ["--force"], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert run_cli("audit", "--workdir", ws).code == 0
    leftovers = [p for p in ws.rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]
    assert not leftovers
