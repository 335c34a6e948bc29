"""The typed manifests: exact JSON round trips, formats refused by name, malformed ones named."""

import json

import pytest
from helpers import copy_workspace, edit_manifest

from sisa import __version__
from sisa.errors import SisaError
from sisa.workspace.files import Workspace
from sisa.workspace.manifest import (
    CHECKPOINTS_FORMAT,
    WORKSPACE_FORMAT,
    CheckpointsManifest,
    DataInfo,
    WorkspaceManifest,
)


def _stored(path) -> dict:
    obj = json.loads(path.read_text())
    obj.pop("checksum")
    return obj


def test_both_manifests_round_trip_to_the_same_json(small_trained):
    workspace = Workspace(small_trained)
    shards = _stored(workspace.manifest_path)
    checkpoints = _stored(workspace.checkpoints_manifest_path)
    assert WorkspaceManifest.from_json(shards).to_json() == shards
    assert CheckpointsManifest.from_json(checkpoints).to_json() == checkpoints
    # and the typed view holds what the JSON says
    manifest = workspace.manifest()
    assert [e.shard for e in manifest.shards] == list(range(manifest.settings.shards))
    assert sum(e.rows for e in manifest.shards) == manifest.data.n_train == shards["data"]["n_train"]
    assert len(workspace.checkpoints().checkpoints) == len(checkpoints["checkpoints"]) > 0


def test_every_workspace_records_the_format_and_the_sisa_version(small_trained):
    shards = _stored(Workspace(small_trained).manifest_path)
    assert shards["format"] == WORKSPACE_FORMAT and shards["sisa_version"] == __version__
    assert _stored(Workspace(small_trained).checkpoints_manifest_path)["format"] == CHECKPOINTS_FORMAT


def test_a_workspace_of_another_format_is_refused_naming_it_and_its_writer(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    edit_manifest(ws / "shards" / "manifest.json", lambda m: m.update(format="sisa-workspace/2", sisa_version="9.0"))
    with pytest.raises(SisaError, match=r"format sisa-workspace/2 \(written by sisa 9.0\); this sisa reads "
                                        r"sisa-workspace/1"):
        Workspace(ws).manifest()
    edit_manifest(ws / "checkpoints" / "manifest.json", lambda m: m.update(format="something-else"))
    with pytest.raises(SisaError, match="is not a sisa-checkpoints/1 manifest"):
        Workspace(ws).checkpoints()


def test_a_malformed_manifest_is_named_not_a_traceback(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    edit_manifest(ws / "shards" / "manifest.json", lambda m: m["shards"][0].pop("sha256"))
    with pytest.raises(SisaError, match="malformed .*sha256"):
        Workspace(ws).manifest()


def test_fields_an_early_workspace_lacks_stay_absent():
    """A manifest written before the initial counts were recorded reads, and writes back unchanged."""
    early = {"shape": [4], "dtype": "float32", "scale": 1.0, "classes": [0, 1], "id_kind": "int",
             "feature_names": None, "n_train": 10, "n_test": 0, "spec": "csv:x.csv"}
    info = DataInfo.from_json(early)
    assert info.n_train_initial is None and info.source == {"spec": "csv:x.csv"}
    assert info.to_json() == early
