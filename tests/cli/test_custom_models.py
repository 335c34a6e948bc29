"""Models of one's own (``--model package.module:factory``) through every command that
builds a model: train, status, eval, delete, audit --replay, on Ray too."""

from __future__ import annotations

import json
import os
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


def two_too_many(shape, n_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, n_classes + 2))


def no_parameters(shape, n_classes):
    return nn.Flatten()
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
    (project / "quits.py").write_text("import sys\nsys.exit(3)\n")
    quits = sisa(project, "train", "--model", "quits:net", "--workdir", "ws", *FLAGS)
    assert quits.returncode == 1 and "importing the model module 'quits' failed: SystemExit" in quits.stderr
    absent = sisa(project, "train", "--model", "nowhere.models:tiny", "--workdir", "ws", *FLAGS)
    assert absent.returncode == 1 and "cannot import the model module 'nowhere.models'" in absent.stderr
    wide = sisa(project, "train", "--model", "nets.models:two_too_many", "--workdir", "ws", *FLAGS)
    assert wide.returncode == 1 and "it must give one logit per class (10 classes)" in wide.stderr
    empty = sisa(project, "train", "--model", "nets.models:no_parameters", "--workdir", "ws", *FLAGS)
    assert empty.returncode == 1 and "has no parameters to train" in empty.stderr
    assert "Traceback" not in wide.stderr + empty.stderr
    assert not (project / "ws").exists()


def test_inference_refuses_other_model_code_and_reading_still_works(project, tmp_path):
    assert sisa(project, "train", "--model", "nets.models:tiny", "--workdir", "ws", *FLAGS).returncode == 0
    other = tmp_path / "other"  # another folder with its own nets/models.py
    (other / "nets").mkdir(parents=True)
    (other / "nets" / "__init__.py").write_text("")
    (other / "nets" / "models.py").write_text(MODEL.replace("nn.Tanh()", "nn.ReLU()"))
    refused = sisa(other, "eval", "--workdir", project / "ws")
    assert refused.returncode == 1 and "changed since the workspace recorded it" in refused.stderr
    status = sisa(other, "status", "--workdir", project / "ws")
    assert status.returncode == 0 and "MODEL CHANGED" in status.stdout
    # a deletion recorded, then the model edited: reading commands still work, and say why
    # the deletion cannot be finished yet
    ledger_env = dict(os.environ, SISA_CRASH_AT="before-retrain")
    crashed = subprocess.run([sys.executable, "-m", "sisa", "delete", "--workdir", "ws", "--ids", "3",
                              "--executor", "local"], cwd=project, env=ledger_env, capture_output=True, timeout=300)
    assert crashed.returncode == -9
    (project / "nets" / "models.py").write_text(MODEL + "\n# tuned\n")
    history = sisa(project, "history", "--workdir", "ws")
    assert history.returncode == 0 and "pending work was not finished" in history.stderr
    assert sisa(project, "eval", "--workdir", "ws").returncode == 1
    assert sisa(project, "recover", "--workdir", "ws", "--accept-model-change").returncode == 0
    assert sisa(project, "eval", "--workdir", "ws").returncode == 0
