"""Receipts and ``locate``: what a data-protection officer is handed, and can check later."""

from __future__ import annotations

import hashlib
import json

import pyarrow.parquet as pq
import pytest
from helpers import checkpoint_shas, make_table, run_cli

from sisa.errors import SisaError
from sisa.ops.history import receipt, seal, verify_receipt
from sisa.workspace.files import Workspace
from sisa.workspace.ledger import read_salt


@pytest.fixture
def ws(tmp_path):
    table = make_table(n=200, features=5)
    pq.write_table(table.slice(0, 160), tmp_path / "d0.parquet")
    pq.write_table(table.slice(160, 40), tmp_path / "d1.parquet")
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"parquet:{tmp_path / 'd0.parquet'}", "--workdir", ws, "--shards", "2",
                   "--slices", "2", "--epochs", "2", "--model", "logreg", "--test-fraction", "0.1").code == 0
    assert run_cli("add", "--workdir", ws, "--data", f"parquet:{tmp_path / 'd1.parquet'}").code == 0
    return ws


def _train_id(ws) -> int:
    return sorted(json.loads(run_cli("locate", "--workdir", ws, "--ids", "1000,1001,1002,1003,1004",
                                     "--json").out)["ids"], key=lambda f: "where" in f)[0]["id"]


def test_a_receipt_verifies_then_fails_after_tampering(ws, tmp_path):
    first = _train_id(ws)
    deleted = run_cli("delete", "--workdir", ws, "--ids", f"{first},1170", "--reference", "DPO-12", "--json")
    assert deleted.code == 0 and deleted.json["request"] == 1
    out = tmp_path / "receipt.json"
    assert run_cli("receipt", "1", "--workdir", ws, "--output", out).code == 0
    body = json.loads(out.read_text())
    assert body["request"]["reference"] == "DPO-12" and sorted(body["ids"]) == sorted([first, 1170])
    assert body["audit"]["ok"] and body["checkpoints_replaced"]
    assert all(c["old"] != c["new"] for c in body["checkpoints_replaced"])
    live = checkpoint_shas(ws)
    assert all(live[(c["shard"], c["slice"])] == c["new"] for c in body["checkpoints_replaced"])
    assert body["software"]["sisa"] and body["software"]["torch"] and body["software"]["numerics"]
    assert run_cli("audit", "--workdir", ws, "--receipt", out).code == 0

    # edited: the seal no longer matches
    edited = dict(body, ids=[first])
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    failed = run_cli("audit", "--workdir", ws, "--receipt", tmp_path / "edited.json")
    assert failed.code == 1 and "changed after it was issued" in failed.out
    # edited and sealed again without the workspace's key: the seal gives it away
    forged = json.loads(json.dumps(body))
    forged["checkpoints_replaced"] = []
    forged["request"]["reference"] = "DPO-99"
    forged["seal"] = hashlib.sha256(json.dumps({k: v for k, v in forged.items() if k != "seal"}, sort_keys=True,
                                               separators=(",", ":")).encode()).hexdigest()
    result = verify_receipt(Workspace(ws), forged)
    assert not result["ok"] and "another workspace issued it" in result["problems"][0]
    assert any("reference" in p for p in result["problems"])
    assert any("replaced checkpoints are not those the ledger recorded" in p for p in result["problems"])
    # sealed with the key itself (someone holding the workspace): the ledger still disagrees
    forged = json.loads(json.dumps(body))
    forged["checkpoints_replaced"][0]["new"] = "0" * 64
    forged["seal"] = seal(forged, read_salt(ws / "shards" / "ledger.sqlite"))
    result = verify_receipt(Workspace(ws), forged)
    assert not result["ok"] and any("not live" in p for p in result["problems"])
    assert not any("seal" in p for p in result["problems"])


def test_a_receipt_stays_valid_when_a_later_request_replaces_its_checkpoints(ws):
    ids = [i for i in range(1000, 1160) if i != _train_id(ws)]
    run_cli("delete", "--workdir", ws, "--ids", str(_train_id(ws)))
    body = receipt(Workspace(ws), 1)
    # delete enough more ids that every shard retrains from slice 0
    assert run_cli("delete", "--workdir", ws, "--ids", ",".join(map(str, ids[:40])), "--ignore-missing").code == 0
    assert set(checkpoint_shas(ws).values()).isdisjoint({c["new"] for c in body["checkpoints_replaced"]})
    assert verify_receipt(Workspace(ws), body)["ok"]
    # a checkpoint no later request replaced is not explained away
    body["checkpoints_replaced"][0]["new"] = "f" * 64
    body["seal"] = seal(body, read_salt(ws / "shards" / "ledger.sqlite"))
    assert not verify_receipt(Workspace(ws), body)["ok"]


def test_salted_ids_keep_the_ids_out_of_the_receipt(ws, tmp_path):
    first = _train_id(ws)
    run_cli("delete", "--workdir", ws, "--ids", str(first))
    result = run_cli("receipt", "1", "--workdir", ws, "--ids-as", "sha256")
    body = json.loads(result.out)
    assert body["ids"] is None and len(body["ids_sha256"]) == 1 and str(first) not in result.out
    assert verify_receipt(Workspace(ws), body)["ok"]
    again = receipt(Workspace(ws), 1, ids_as="sha256")
    assert again["ids_sha256"] == body["ids_sha256"]  # one salt per workspace, kept


def test_receipts_refuse_what_they_cannot_vouch_for(ws, tmp_path):
    with pytest.raises(SisaError, match="no deletion request 3"):
        receipt(Workspace(ws), 3)
    bad = run_cli("audit", "--workdir", ws, "--receipt", tmp_path / "nope.json")
    assert bad.code == 1 and "cannot read --receipt" in bad.err
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    assert "not a sisa deletion receipt" in run_cli("audit", "--workdir", ws, "--receipt", tmp_path / "x.json").err
    run_cli("delete", "--workdir", ws, "--ids", str(_train_id(ws)))
    out = tmp_path / "r.json"
    assert run_cli("receipt", "1", "--workdir", ws, "--output", out).code == 0
    again = run_cli("receipt", "1", "--workdir", ws, "--output", out)
    assert again.code == 1 and "not overwritten" in again.err


def test_locate_says_where_every_id_is(ws):
    first = _train_id(ws)
    run_cli("delete", "--workdir", ws, "--ids", str(first))
    found = run_cli("locate", "--workdir", ws, "--ids", f"{first},1170,99999", "--json").json["ids"]
    by_id = {f["id"]: f for f in found}
    assert by_id[first]["deleted"] and by_id[first]["request"] == 1
    assert by_id[1170]["version"] == 2 and by_id[1170]["slice"] == 2  # added as the third slice
    assert by_id[99999]["unknown"]
    text = run_cli("locate", "--workdir", ws, "--ids", "1170").out
    assert "version 2" in text


def test_a_receipt_survives_a_revert_and_a_new_add_in_the_same_slices(ws, tmp_path):
    assert run_cli("delete", "--workdir", ws, "--ids", "1170").code == 0  # from the added slice 2
    body = receipt(Workspace(ws), 1)
    assert any(c["slice"] == 2 for c in body["checkpoints_replaced"])
    assert run_cli("revert", "--workdir", ws, "--to", "1").code == 0
    table = make_table(n=230, features=5).slice(200, 30)  # new ids 1200..1229
    pq.write_table(table, tmp_path / "d2.parquet")
    assert run_cli("add", "--workdir", ws, "--data", f"parquet:{tmp_path / 'd2.parquet'}").code == 0
    assert verify_receipt(Workspace(ws), body)["ok"]


def test_a_request_for_ids_already_deleted_is_answered_when_it_has_a_reference(ws):
    first = _train_id(ws)
    run_cli("delete", "--workdir", ws, "--ids", str(first))
    again = run_cli("delete", "--workdir", ws, "--ids", str(first), "--reference", "T-2", "--json").json
    assert again["request"] == 2 and again["deleted"] == [] and again["already_deleted"] == [first]
    body = receipt(Workspace(ws), 2)
    assert body["ids"] == [] and body["already_deleted_ids"] == [first] and body["audit"]["ok"]
    assert body["request"]["reference"] == "T-2" and verify_receipt(Workspace(ws), body)["ok"]
    silent = run_cli("delete", "--workdir", ws, "--ids", str(first), "--json").json
    assert "request" not in silent  # no reference: a retried call records nothing new


def test_a_receipt_after_a_crash_names_the_checkpoints_it_replaced(ws, tmp_path):
    import os
    import subprocess
    import sys

    before = checkpoint_shas(ws)
    env = dict(os.environ, SISA_CRASH_AT="mid-retrain")
    run = subprocess.run([sys.executable, "-m", "sisa", "delete", "--workdir", str(ws), "--ids",
                          str(_train_id(ws)), "--executor", "local"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == -9
    assert run_cli("recover", "--workdir", ws).code == 0
    replaced = receipt(Workspace(ws), 1)["checkpoints_replaced"]
    assert replaced and all(c["old"] == before[(c["shard"], c["slice"])] for c in replaced)
