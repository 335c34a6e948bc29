"""Committing results: a checkpoint the driver cannot read is never named by a manifest (issue 13)."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from helpers import copy_workspace, run_cli, training_ids

from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.ops.delete import delete
from sisa.ops.train import train_workspace
from sisa.settings import Settings
from sisa.training.executors import InProcessExecutor
from sisa.workspace.files import Workspace

# -- a Ray worker that writes its checkpoints where the driver cannot see them

class ElsewhereExecutor:
    """Runs each job against another copy of the workspace folder, as a Ray worker without
    shared storage (but with its own copy of the folder) would."""

    def __init__(self, other: Path) -> None:
        self.other = other

    def run(self, jobs, progress=None):
        for job in jobs:
            target = self.other / Path(job.workdir).name
            if not target.exists():
                shutil.copytree(job.workdir, target)
            yield from InProcessExecutor().run([dataclasses.replace(job, workdir=str(target))], progress)


def test_checkpoints_the_driver_cannot_see_are_never_committed(tmp_path, small_source):
    dataset = load(f"parquet:{small_source}")
    with pytest.raises(SisaError, match="nothing was committed.*shared storage"):
        train_workspace(tmp_path / "ws", dataset, Settings(shards=2, slices=2, epochs=1),
                        executor=ElsewhereExecutor(tmp_path / "elsewhere"))
    assert not (tmp_path / "ws" / "shards" / "manifest.json").exists()
    assert not list((tmp_path / "ws").glob(".sisa-staging-*"))


def test_a_deletion_retrained_elsewhere_is_not_committed(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    with pytest.raises(SisaError, match="nothing was committed"):
        delete(Workspace(ws), training_ids(ws)[:1], executor=ElsewhereExecutor(tmp_path / "elsewhere"))
    records = json.loads((ws / "checkpoints" / "manifest.json").read_text())["checkpoints"]
    assert all((ws / "checkpoints" / r["file"]).is_file() for r in records)  # no record of a file not here
    status = run_cli("status", "--workdir", ws, "--json").json
    assert status["deletions"]["pending"] == 1  # the request stays open: the next command finishes it
    assert run_cli("recover", "--workdir", ws).code == 0
    assert run_cli("audit", "--workdir", ws).code == 0
