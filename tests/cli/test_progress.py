"""What training commands show while they run: a bar on a terminal, lines elsewhere, -q, -v,
and ``train --log-dir``'s loss curves; none of it changes a trained bit or stdout's JSON."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import math
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios

import pytest
from helpers import checkpoint_shas, run_cli, training_ids

from sisa.cli.progress import Bar
from sisa.settings import Settings
from sisa.training.jobs import DataSpec, EpochReport, ShardJob
from sisa.workspace.manifest import CheckpointRecord

TINY = ("--shards", "2", "--slices", "2", "--epochs", "3", "--executor", "local")
"""Two shards of two slices, two epochs each (3 recalibrated over 2 slices), in this process."""
SLICE_LINE = re.compile(r"^shard \d+ slice \d+: \d+ samples, \d+ epochs?, ", re.M)


def run_on_terminal(*argv, timeout: float = 180) -> tuple[int, str, str]:
    """Run ``sisa argv`` in a child whose stderr is a terminal (a pty 120 columns wide) and
    whose stdout is a pipe; returns its exit status, stdout and everything the terminal got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "sisa", *map(str, argv)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = bytearray()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                raise AssertionError(f"sisa {' '.join(map(str, argv))} wrote nothing for {timeout} s")
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every end of the terminal in the child is closed
                break
            if not chunk:
                break
            seen += chunk
        out = proc.stdout.read().decode()
        return proc.wait(timeout=timeout), out, seen.decode(errors="replace")
    finally:
        proc.stdout.close()
        os.close(master)
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def on_terminal(tmp_path_factory):
    """``sisa train --json --log-dir`` with stderr on a terminal: (status, stdout, terminal, folder)."""
    folder = tmp_path_factory.mktemp("terminal")
    code, out, seen = run_on_terminal("train", "--workdir", folder / "ws", *TINY, "--json",
                                      "--log-dir", folder / "logs")
    return code, out, seen, folder


def test_a_terminal_gets_a_live_bar_with_eta_rate_and_loss(on_terminal):
    code, out, seen, _ = on_terminal
    assert code == 0, seen
    frames = [frame for frame in seen.replace("\r\n", "\n").replace("\r", "\n").split("\n") if "%|" in frame]
    assert len(frames) >= 4, seen  # drawn per epoch, not once at the end
    last = frames[-1]
    assert "100%|" in last and re.search(r"\[\d\d:\d\d<\d\d:\d\d, ", last), last  # elapsed<remaining
    assert "samples/s" in last and re.search(r"loss=\d+\.\d{4}", last), last
    assert any(frame.startswith("shard 1 slice 1: ") for frame in frames), frames
    assert not SLICE_LINE.search(seen), "the bar replaces the per-slice lines"


def test_json_stays_one_clean_object_on_stdout_under_the_bar(on_terminal):
    code, out, _, _ = on_terminal
    assert code == 0 and out.count("\n") == 1
    result = json.loads(out)
    assert result["ok"] is True and result["n_train"] > 0


@pytest.mark.numerics
def test_watching_every_epoch_changes_no_trained_bit(on_terminal, tmp_path, monkeypatch):
    """The run under the bar and --log-dir (per-epoch callback, losses summed) against one
    whose slices train with no per-epoch callback at all: the same checkpoints, byte for byte."""
    import sisa.training.slices as slices
    from sisa.data.sources import load
    from sisa.ops.train import train_workspace

    code, out, _, folder = on_terminal
    monkeypatch.setattr(slices, "_epoch_reporter", lambda *args: None)
    digits = load("digits")
    settings = Settings(**{**digits.defaults, "shards": 2, "slices": 2, "epochs": 3})  # TINY's
    train_workspace(tmp_path / "unwatched", digits, settings)
    watched = checkpoint_shas(folder / "ws")
    assert len(watched) == 4 and watched == checkpoint_shas(tmp_path / "unwatched")


def test_a_pipe_gets_one_line_per_slice_and_no_bar(tmp_path):
    result = run_cli("train", "--workdir", tmp_path / "ws", *TINY)
    assert result.code == 0, result.err
    assert len(SLICE_LINE.findall(result.err)) == 4
    assert result.err.startswith("plan: 2 shards x 2 slices")
    assert "\r" not in result.err and "%|" not in result.err and "DEBUG" not in result.err


def test_quiet_prints_no_progress_but_still_warns(tmp_path):
    # slices of ~360 rows under a 1,000-row batch: train warns about them, even with -q
    result = run_cli("train", "--workdir", tmp_path / "ws", *TINY, "--batch-size", "1000", "-q")
    assert result.code == 0, result.err
    assert not SLICE_LINE.search(result.err) and "plan:" not in result.err
    assert result.err.startswith("warning: ") and "smaller than one batch" in result.err
    assert "trained 2 shards x 2 slices" in result.out
    deleted = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", training_ids(tmp_path / "ws")[0], "--no-serve",
                      "--quiet")
    assert deleted.code == 0 and deleted.err == "", deleted.err
    assert deleted.out.startswith("deleted 1 of 1 id(s)")


def test_verbose_logs_where_the_work_happens_and_leaves_no_handler(tmp_path):
    result = run_cli("train", "--workdir", tmp_path / "ws", *TINY, "-v")
    assert result.code == 0, result.err
    for expected in (r"\d\d:\d\d:\d\d DEBUG sisa\.training\.executors: planned 2 shard job\(s\) in this "
                     r"process, one after another: shards 0, 1, \d+ sample-passes",
                     r"DEBUG sisa\.training\.slices: shard 1 slice 1: trained \d+ rows x 2 epochs in \d",
                     r"DEBUG sisa\.training\.slices: shard 0 slice 0: wrote checkpoint shard-000/",
                     r"DEBUG sisa\.ops\.train: swapped the new workspace in"):
        assert re.search(expected, result.err), (expected, result.err)
    assert len(SLICE_LINE.findall(result.err)) == 4  # the lines stay; -v adds to them
    assert logging.getLogger("sisa").handlers == []  # a sisa serve runs the next command clean
    deleted = run_cli("delete", "--workdir", tmp_path / "ws", "--ids", training_ids(tmp_path / "ws")[0], "--no-serve",
                      "-v")
    assert deleted.code == 0 and "DEBUG sisa.ops.commit: retraining shard" in deleted.err, deleted.err


@pytest.mark.parametrize("command", ["train", "delete", "add", "repair", "recover"])
def test_quiet_and_verbose_together_are_refused(tmp_path, command):
    extra = {"add": ["--data", "csv:rows.csv"], "delete": ["--ids", "3"]}.get(command, [])
    result = run_cli(command, "--workdir", tmp_path / "ws", *extra, "-q", "-v")
    assert result.code == 2 and "not allowed with argument -q/--quiet" in result.err, result.err
    assert not (tmp_path / "ws").exists()


def test_log_dir_writes_a_loss_row_per_shard_slice_and_epoch(tmp_path, monkeypatch):
    # as without the tensorboard package: losses.csv alone, and a note saying how to get more
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    logs = tmp_path / "logs"
    result = run_cli("train", "--workdir", tmp_path / "ws", *TINY, "--log-dir", logs)
    assert result.code == 0, result.err
    assert "tensorboard package is not installed" in result.err and "pip install tensorboard" in result.err
    assert sorted(p.name for p in logs.iterdir()) == ["losses.csv"]
    with open(logs / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["shard", "slice", "epoch", "loss", "samples", "seconds"]
    manifest = json.loads((tmp_path / "ws" / "checkpoints" / "manifest.json").read_text())
    expected = [(r["shard"], r["slice"], e, r["samples"]) for r in manifest["checkpoints"] for e in range(r["epochs"])]
    assert len(expected) == 2 * 2 * 2  # shards x slices x epochs
    assert sorted((int(r["shard"]), int(r["slice"]), int(r["epoch"]), int(r["samples"])) for r in rows) == expected
    losses = [float(r["loss"]) for r in rows]
    assert all(math.isfinite(x) and x > 0 for x in losses) and all(float(r["seconds"]) >= 0 for r in rows)


def test_log_dir_writes_a_tensorboard_run_per_shard(on_terminal):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, _, folder = on_terminal
    logs = folder / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["losses.csv", "shard-000", "shard-001"]
    with open(logs / "losses.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for shard in (0, 1):
        run = EventAccumulator(str(logs / f"shard-{shard:03d}"))
        run.Reload()
        assert set(run.Tags()["scalars"]) >= {"loss", "samples_per_s"}
        curve = [(e.step, e.value) for e in run.Scalars("loss")]
        mine = [float(r["loss"]) for r in rows if int(r["shard"]) == shard]
        assert [step for step, _ in curve] == list(range(len(mine))) == [0, 1, 2, 3]
        assert [value for _, value in curve] == pytest.approx(mine, rel=1e-6)  # stored as float32


def test_log_dir_is_refused_before_training_when_it_holds_files(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "notes.txt").write_text("mine\n")
    result = run_cli("train", "--workdir", tmp_path / "ws", *TINY, "--log-dir", logs)
    assert result.code == 1 and f"--log-dir {logs} is not empty; give a new or empty folder" in result.err
    assert not (tmp_path / "ws").exists() and sorted(p.name for p in logs.iterdir()) == ["notes.txt"]


def job(shard: int, slice_rows: tuple[int, ...], **options) -> ShardJob:
    return ShardJob("unused", shard, Settings(shards=2, slices=2, epochs=3), DataSpec((4,), "float32", 1.0, 2), (),
                    slice_rows=slice_rows, **options)


def record(shard: int, slice_: int, samples: int, epochs: int) -> CheckpointRecord:
    return CheckpointRecord(shard=shard, slice=slice_, file="f", sha256="s", ids_sha256="i", samples=samples,
                            epochs=epochs, bytes=1, seconds=0.1)


@pytest.mark.parametrize("concurrent", [False, True])
def test_the_bar_counts_every_sample_pass_once_whatever_arrives(concurrent):
    """In this process a slice's epochs come before its checkpoint; under Ray they all come at
    the end, or (vectorised groups) not at all: the bar ends at its total either way."""
    bar = Bar(io.StringIO())
    jobs = [job(0, (3, 4)), job(1, (5, 2))]
    bar.planned(jobs, concurrent=concurrent)
    assert bar.bar.total == 3 * 2 + 7 * 2 + 5 * 2 + 7 * 2
    bar.epoch_done(EpochReport(0, 0, 0, 0.5, 3, 0.1))
    bar.epoch_done(EpochReport(0, 0, 1, 0.25, 3, 0.1))
    bar.slice_done(record(0, 0, 3, 2))
    assert bar.bar.n == 6
    bar.slice_done(record(0, 1, 7, 2))  # no epochs heard of
    assert bar.bar.n == 20 and bar.bar.postfix == "loss=0.2500"
    assert bar._describe() == ("Ray: shard 1 to finish" if concurrent else "shard 1 slice 0")
    bar.slice_done(record(1, 0, 5, 2))
    bar.slice_done(record(1, 1, 7, 2))
    assert bar.bar.n == bar.bar.total == 44 and bar._describe() == "done"
    bar.planned([job(1, (5, 2), from_slice=1)], concurrent=concurrent)  # a command's second run adds to it
    bar.slice_done(record(1, 1, 7, 2))
    bar.close()
    assert bar.bar.n == bar.bar.total == 44 + 7 * 2
