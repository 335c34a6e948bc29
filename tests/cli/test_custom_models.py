"""Models of one's own (``--model package.module:factory``) through every command that
builds a model: train, status, eval, delete, audit --replay, on Ray too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import checkpoint_shas

from sisa.errors import SisaError
from sisa.settings import Settings

MODEL = '''from torch import nn


def tiny(shape, n_classes):
    """A one-hidden-layer net of the user's own."""
    n = 1
    for d in shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 12), nn.Tanh(), nn.Linear(12, n_classes))


def broken(shape, n_classes):
    return "not a module"
'''
FLAGS = ("--shards", "2", "--slices", "2", "--epochs", "2")


def sisa(cwd: Path, *argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sisa", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def project(tmp_path):
    """A folder holding the user's model package ``nets/models.py``."""
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "__init__.py").write_text("")
    (tmp_path / "nets" / "models.py").write_text(MODEL)
    return tmp_path


def test_a_model_of_ones_own_goes_through_every_command(project):
    trained = sisa(project, "train", "--model", "nets.models:tiny", "--workdir", "ws", *FLAGS)
    assert trained.returncode == 0, trained.stderr
    manifest = json.loads((project / "ws" / "shards" / "manifest.json").read_text())
    source = manifest["model_source"]
    assert source["model"] == "nets.models:tiny" and source["file"] == str(project / "nets" / "models.py")
    assert len(source["sha256"]) == 64
    assert "model=nets.models:tiny" in sisa(project, "status", "--workdir", "ws").stdout
    assert sisa(project, "eval", "--workdir", "ws").returncode == 0
    deleted = sisa(project, "delete", "--workdir", "ws", "--ids", "3,17", "--executor", "ray")
    assert deleted.returncode == 0, deleted.stderr  # Ray workers import it where the driver found it
    replay = sisa(project, "audit", "--workdir", "ws", "--replay")
    assert replay.returncode == 0 and "bit for bit" in replay.stdout, replay.stdout + replay.stderr
    # the same deletion in process gives the same checkpoints as on Ray
    assert sisa(project, "train", "--model", "nets.models:tiny", "--workdir", "local", *FLAGS).returncode == 0
    assert sisa(project, "delete", "--workdir", "local", "--ids", "3,17", "--executor", "local").returncode == 0
    assert checkpoint_shas(project / "ws") == checkpoint_shas(project / "local")
    # from another folder the module is not importable: said so, not a traceback
    elsewhere = sisa(project.parent, "eval", "--workdir", project / "ws")
    assert elsewhere.returncode == 1 and "cannot import the model module 'nets.models'" in elsewhere.stderr


def test_a_changed_model_source_is_refused_before_anything_is_recorded(project):
    assert sisa(project, "train", "--model", "nets.models:tiny", "--workdir", "ws", *FLAGS).returncode == 0
    (project / "nets" / "models.py").write_text(MODEL + "\n# tuned\n")
    refused = sisa(project, "delete", "--workdir", "ws", "--ids", "3")
    assert refused.returncode == 1 and "changed since the workspace recorded it" in refused.stderr
    assert "--accept-model-change" in refused.stderr
    assert not (project / "ws" / "shards" / "ledger.sqlite").exists()  # no request was recorded
    replay = sisa(project, "audit", "--workdir", "ws", "--replay")
    assert replay.returncode == 1 and "changed" in replay.stdout
    accepted = sisa(project, "delete", "--workdir", "ws", "--ids", "3", "--accept-model-change")
    assert accepted.returncode == 0 and "accepted the changed model source" in accepted.stderr
    manifest = json.loads((project / "ws" / "shards" / "manifest.json").read_text())
    assert manifest["model_source"]["previous_sha256"] != manifest["model_source"]["sha256"]


def test_bad_model_names_and_factories_are_named(project, monkeypatch):
    Settings(model="nets.models:tiny")  # the name is checked without importing anything
    for name in ("nets models:tiny", "nets.models:", ":tiny", "nets.models:tiny:x"):
        with pytest.raises(SisaError, match="unknown model"):
            Settings(model=name)
    broken = sisa(project, "train", "--model", "nets.models:broken", "--workdir", "ws", *FLAGS)
    assert broken.returncode == 1 and "returned str, not a torch.nn.Module" in broken.stderr
    missing = sisa(project, "train", "--model", "nets.models:nothing", "--workdir", "ws", *FLAGS)
    assert missing.returncode == 1 and "has no function 'nothing'" in missing.stderr
    absent = sisa(project, "train", "--model", "nowhere.models:tiny", "--workdir", "ws", *FLAGS)
    assert absent.returncode == 1 and "cannot import the model module 'nowhere.models'" in absent.stderr
    assert not (project / "ws").exists()
