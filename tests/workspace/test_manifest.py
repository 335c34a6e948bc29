"""The typed manifests: exact JSON round trips, formats refused by name, malformed ones named."""

import json

import pytest
from helpers import (
    checkpoint_shas,
    copy_workspace,
    edit_manifest,
    run_cli,
)

from sisa import __version__
from sisa.errors import SisaError
from sisa.ids import ids_digest
from sisa.training.jobs import ShardJob
from sisa.workspace.files import (
    Workspace,
    file_ids,
    legacy_checkpoint_bytes,
    sha256_bytes,
)
from sisa.workspace.manifest import (
    CHECKPOINTS_FORMAT,
    WORKSPACE_FORMAT,
    CheckpointsManifest,
    DataInfo,
    WorkspaceManifest,
)
from sisa.workspace.rows import rows_to_parquet


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
    edit_manifest(ws / "shards" / "manifest.json", lambda m: m.update(format="sisa-workspace/3", sisa_version="9.0"))
    with pytest.raises(SisaError, match=r"format sisa-workspace/3 \(written by sisa 9.0\); this sisa reads "
                                        r"sisa-workspace/2 and sisa-workspace/1"):
        Workspace(ws).manifest()
    edit_manifest(ws / "checkpoints" / "manifest.json", lambda m: m.update(format="something-else"))
    with pytest.raises(SisaError, match="is not a sisa-checkpoints/2 manifest"):
        Workspace(ws).checkpoints()
    edit_manifest(ws / "checkpoints" / "manifest.json", lambda m: m.update(format="sisa-checkpoints/3"))
    with pytest.raises(SisaError, match=r"format sisa-checkpoints/3; this sisa reads sisa-checkpoints/2"):
        Workspace(ws).checkpoints()


def _as_format_1(ws) -> None:
    """Rewrite a workspace's checkpoints as sisa wrote them before weights had a file of their
    own: one file per checkpoint holding the whole state, in a sisa-checkpoints/1 manifest."""
    workspace = Workspace(ws)
    records = []
    for record in workspace.checkpoints().checkpoints:
        data = legacy_checkpoint_bytes(workspace.load_checkpoint(record))  # what sisa 0.2.0 wrote
        (ws / "checkpoints" / record.weights).unlink()
        workspace.write_checkpoint(record.file, data)
        records.append(dict(record.to_json(), sha256=sha256_bytes(data), bytes=len(data)))
        for name in ("weights", "weights_sha256", "weights_bytes"):
            records[-1].pop(name)

    def downgrade(m):
        m.update(format="sisa-checkpoints/1", checkpoints=records)

    edit_manifest(ws / "checkpoints" / "manifest.json", downgrade)
    manifest = workspace.manifest()
    shards = []
    for entry in manifest.shards:  # and one data file per shard
        rows = ShardJob.for_shard(str(ws), manifest, entry).read_rows(workspace)
        name, sha = workspace.write_versioned(f"shard-{entry.shard:03d}", rows_to_parquet(rows.ids, entry.shard, rows.slice,
                                                                            rows.label, rows.X))
        for part in entry.parts:
            (ws / "shards" / part.file).unlink()
        shards.append({"file": name, "sha256": sha, "rows": entry.rows, "ids_sha256": ids_digest(rows.ids),
                       "shard": entry.shard, "slice_rows": list(entry.slice_rows)})
    edit_manifest(ws / "shards" / "manifest.json", lambda m: m.update(format="sisa-workspace/1", shards=shards))


def test_a_format_1_workspace_is_read_and_written_back_as_format_2(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    _as_format_1(ws)
    assert not list((ws / "checkpoints").rglob("*.weights.pt"))
    reference = copy_workspace(small_trained, tmp_path / "reference")
    evaluated = run_cli("eval", "--workdir", ws, "--json")
    assert evaluated.code == 0 and evaluated.json == run_cli("eval", "--workdir", reference, "--json").json
    assert run_cli("audit", "--workdir", ws).code == 0
    # one id of a last slice, so that the shard keeps a checkpoint of format 1 before it
    forget = [next(i for i, slice_ in zip(*file_ids(Workspace(ws), entry)) if slice_ == 1)
              for entry in Workspace(ws).manifest().shards[:1]]
    for path in (ws, reference):
        assert run_cli("delete", "--workdir", path, "--ids", ",".join(map(str, forget))).code == 0
    migrated = _stored(Workspace(ws).checkpoints_manifest_path)
    assert migrated["format"] == CHECKPOINTS_FORMAT
    # the shard that held the id is now one file per slice; the others are still one file
    data = Workspace(ws).manifest()
    assert data.format == WORKSPACE_FORMAT and [len(e.parts) for e in data.shards] == [2, 1, 1]
    assert sorted(p.name for p in (ws / "shards").glob("shard-*.parquet")) == sorted(e.file for e in data.files()
                                                                                      if e.shard is not None)
    fresh = {(r["shard"], r["slice"]): r["sha256"] for r in migrated["checkpoints"] if "weights" in r}
    assert fresh and all(checkpoint_shas(reference)[key] == sha for key, sha in fresh.items())
    assert len(fresh) < len(migrated["checkpoints"])  # untouched checkpoints stay one file each
    assert run_cli("eval", "--workdir", ws, "--json").json == run_cli("eval", "--workdir", reference, "--json").json
    # the replay compares format 1 checkpoints with fresh ones written as format 1 was
    replayed = run_cli("audit", "--workdir", ws, "--replay", "--json")
    assert replayed.code == 0 and replayed.json["replayed_shards"], replayed.out


def test_a_malformed_manifest_is_named_not_a_traceback(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    edit_manifest(ws / "shards" / "manifest.json", lambda m: m["shards"][0]["files"][0].pop("sha256"))
    with pytest.raises(SisaError, match="malformed .*sha256"):
        Workspace(ws).manifest()


def test_fields_an_early_workspace_lacks_stay_absent():
    """A manifest written before the initial counts were recorded reads, and writes back unchanged."""
    early = {"shape": [4], "dtype": "float32", "scale": 1.0, "classes": [0, 1], "id_kind": "int",
             "feature_names": None, "n_train": 10, "n_test": 0, "spec": "csv:x.csv"}
    info = DataInfo.from_json(early)
    assert info.n_train_initial is None and info.source == {"spec": "csv:x.csv"}
    assert info.to_json() == early
