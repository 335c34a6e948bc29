"""``sisa audit``: a replay that differs says when the workspace was trained by another sisa
version, and ids never requested for deletion are named."""

import dataclasses

from helpers import copy_workspace, edit_manifest, run_cli, training_ids

from sisa import __version__
from sisa.ops.audit import audit
from sisa.ops.delete import delete
from sisa.workspace.files import Workspace


def _replay_with_other_bits(monkeypatch):
    """Make the replay's fresh checkpoints differ, as a change in training code would."""
    import sisa.ops.audit

    real = sisa.ops.audit.run_carried

    def changed(jobs, *args):
        results = real(jobs, *args)
        for result in results:
            result.checkpoints = [dataclasses.replace(r, sha256="0" * 64) for r in result.checkpoints]
        return results

    monkeypatch.setattr(sisa.ops.audit, "run_carried", changed)


def test_a_replay_mismatch_names_the_version_that_trained(small_trained, tmp_path, monkeypatch):
    ws = copy_workspace(small_trained, tmp_path)
    delete(Workspace(ws), [training_ids(ws)[0]])
    edit_manifest(ws / "shards" / "manifest.json", lambda m: m.update(sisa_version="0.0.1"))
    _replay_with_other_bits(monkeypatch)
    report = audit(Workspace(ws), replay=True)
    [problem] = [p for p in report["problems"] if p.startswith("replay of shard")]
    assert f"trained by sisa 0.0.1 and this is sisa {__version__}" in problem


def test_no_version_hint_when_the_versions_match(small_trained, tmp_path, monkeypatch):
    ws = copy_workspace(small_trained, tmp_path)
    delete(Workspace(ws), [training_ids(ws)[0]])
    _replay_with_other_bits(monkeypatch)
    [problem] = [p for p in audit(Workspace(ws), replay=True)["problems"] if p.startswith("replay of shard")]
    assert "trained by sisa" not in problem and "differs at slices" in problem


def test_audit_names_ids_never_requested(small_trained, tmp_path):
    ws = copy_workspace(small_trained, tmp_path)
    never = training_ids(ws)[0]
    result = run_cli("audit", "--workdir", ws, "--ids", never, "--json")
    assert result.code == 1
    assert "never requested for deletion" in result.json["problems"][0]
    assert not any("holds deleted ids" in p for p in result.json["problems"])
