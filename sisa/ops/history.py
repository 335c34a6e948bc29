"""What the people who must prove a deletion read: the history, receipts, and where an id is.

:func:`history` lists every workspace version and every deletion request, oldest first.
:func:`receipt` writes one request up as a deletion receipt: the request, its ids (or their
salted sha256), the checkpoints it replaced, the workspace after it, the software and numerics
it ran under, and an audit of its ids now; the receipt is sealed by the sha256 of its contents.
:func:`verify_receipt` checks a receipt against the workspace as it is now. :func:`locate`
says where each id is: its shard, slice and the version that brought it in, or its deletion.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime, timezone
from typing import Any, Sequence

from sisa.data.partition import assign
from sisa.errors import SisaError
from sisa.ids import key_text
from sisa.ops.audit import audit
from sisa.ops.commit import TEST_SHARD
from sisa.workspace.files import Workspace, file_ids
from sisa.workspace.ledger import (
    CARRIED_SHARD,
    Ledger,
    read_ledger,
    read_requests,
    read_salt,
    read_versions,
)
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import WorkspaceManifest

RECEIPT_FORMAT = "sisa-deletion-receipt/1"


# ----------------------------------------------------------------------------------- history

def history(workspace: Workspace) -> dict[str, Any]:
    """Every version and every deletion request, oldest first (no ids: counts only)."""
    with workspace_lock(workspace.root, exclusive=False):
        manifest = workspace.manifest()
        versions = read_versions(workspace.ledger_path) or [_base_version(manifest)]
        requests = read_requests(workspace.ledger_path)
    events = [dict(v, event="version") for v in versions] + [_request_event(r) for r in requests]
    events.sort(key=lambda e: (e["created"], e["event"] == "request", e.get("version") or e.get("request")))
    return {"version": manifest.version, "events": events}


def _base_version(manifest: WorkspaceManifest) -> dict[str, Any]:
    """The training of a workspace from before versions were recorded, as its ledger would say."""
    return {"version": manifest.version, "kind": "train", "created": manifest.created, "updated": manifest.created,
            "state": "done", "rows": manifest.data.n_train_initial, "slices": manifest.settings.slices}


def _request_event(request: dict[str, Any]) -> dict[str, Any]:
    ids = request["ids"]
    return {"event": "request", "request": request["request"], "created": request["created"],
            "updated": request["updated"], "state": request["state"], "reference": request.get("reference"),
            "asked": request.get("asked", len(ids)), "deleted": len(ids),
            "already_deleted": request.get("already_deleted", 0),
            "deleted_from_test_only": sum(1 for _, shard, _ in ids if shard == TEST_SHARD),
            "shards": [{"shard": r["shard"], "from_slice": r["from_slice"]} for r in request.get("retrained", [])],
            "samples_retrained": request.get("samples_retrained"), "seconds": request.get("retrain_seconds")}


# ---------------------------------------------------------------------------------- receipts

def receipt(workspace: Workspace, request: int, *, ids_as: str = "plain") -> dict[str, Any]:
    """The deletion receipt of ``request`` (ids ``plain``, or ``sha256`` salted with the
    workspace's secret salt), with an audit of its ids run now; sealed."""
    if ids_as not in ("plain", "sha256"):
        raise SisaError(f"ids_as must be plain or sha256, got {ids_as!r}")
    with workspace_lock(workspace.root, exclusive=True):
        found = _request(read_requests(workspace.ledger_path), request)
        if found["state"] != "committed":
            raise SisaError(f"request {request} is {found['state']}, not yet committed: run 'sisa recover', "
                            f"then ask for its receipt")
        keys, already = [key for key, _, _ in found["ids"]], list(found.get("already_deleted_ids", []))
        with Ledger(workspace.ledger_path) as ledger:
            key = ledger.salt()  # the workspace's secret: it seals receipts and salts hashed ids
        manifest, checkpoints = workspace.manifest(), workspace.checkpoints()
        checked = audit(workspace, [_value(k) for k in keys + already])
    hashed = ids_as == "sha256"
    body = {
        "format": RECEIPT_FORMAT,
        "issued": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "workspace": str(workspace.root.resolve()),
        "request": {name: found.get(name) for name in _REQUEST_FIELDS},
        "ids": None if hashed else [_value(k) for k in keys],
        "ids_sha256": [salted(key, k) for k in keys] if hashed else None,
        "already_deleted_ids": None if hashed else [_value(k) for k in already],
        "already_deleted_ids_sha256": [salted(key, k) for k in already] if hashed else None,
        "id_hash": "sha256(salt + ':' + canonical id), salt kept in the workspace's ledger" if hashed else None,
        "checkpoints_replaced": found.get("replaced", []),
        "workspace_after": {"version": manifest.version, "shards": {str(r.shard): {"slice": r.slice, "sha256": r.sha256}
                                                                   for r in checkpoints.final().values()}},
        "software": _software(checkpoints.environment),
        "audit": {"ok": checked["ok"], "problems": checked["problems"], "checked_ids": checked["checked_ids"]},
    }
    return dict(body, seal=seal(body, key))


_REQUEST_FIELDS = ("request", "created", "updated", "state", "reference", "asked", "already_deleted", "version")


def _value(key: str) -> Any:
    """A canonical id ('i:7', 's:alice') as the user wrote it (7, 'alice')."""
    return int(key[2:]) if key.startswith("i:") else key[2:]


def salted(salt: str, key: str) -> str:
    return hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()


def seal(body: dict[str, Any], key: str) -> str:
    """HMAC-SHA256, keyed by the workspace's secret, of the receipt's contents (every field but
    the seal) as canonical JSON: only the workspace can issue a receipt that verifies."""
    text = json.dumps({k: v for k, v in body.items() if k != "seal"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key.encode(), text.encode(), hashlib.sha256).hexdigest()


def _software(environment: dict[str, Any]) -> dict[str, Any]:
    from sisa import __version__

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = None
    return {"sisa": __version__, "torch": torch_version, "numerics": environment}


def _request(requests: list[dict[str, Any]], request: int) -> dict[str, Any]:
    """Request ``request`` of the ledger's ``requests`` (:func:`read_requests`)."""
    requests = {r["request"]: r for r in requests}
    if request not in requests:
        known = ", ".join(map(str, sorted(requests))) or "none"
        raise SisaError(f"no deletion request {request} in this workspace (requests: {known})")
    return requests[request]


# ------------------------------------------------------------------------------ verification

def verify_receipt(workspace: Workspace, body: dict[str, Any]) -> dict[str, Any]:
    """Check a receipt against the workspace now: unchanged since issued, its request in the
    ledger with the same ids, none of them anywhere in the workspace, and every checkpoint it
    names live or replaced by a later recorded request, revert or training."""
    if not isinstance(body, dict) or body.get("format") != RECEIPT_FORMAT:
        raise SisaError(f"not a sisa deletion receipt (format {RECEIPT_FORMAT})")
    problems: list[str] = []
    with workspace_lock(workspace.root, exclusive=False):
        key = read_salt(workspace.ledger_path)
        if key is None:
            raise SisaError("this workspace has issued no receipt (it holds no receipt key): is the receipt "
                            "another workspace's?")
        if not hmac.compare_digest(str(body.get("seal")), seal(body, key)):
            problems.append("the receipt was changed after it was issued, or another workspace issued it (its "
                            "seal does not match its contents under this workspace's key)")
        number = (body.get("request") or {}).get("request")
        requests = read_requests(workspace.ledger_path)
        found = _request(requests, number) if isinstance(number, int) else None
        if found is None:
            raise SisaError("the receipt names no request")
        keys, already = [k for k, _, _ in found["ids"]], list(found.get("already_deleted_ids", []))
        problems += _check_ids(body, "ids", keys, key, number) + _check_ids(body, "already_deleted_ids", already,
                                                                              key, number)
        problems += _check_recorded(body, found)
        checked = audit(workspace, [_value(k) for k in keys + already])
        problems += [f"audit: {p}" for p in checked["problems"]]
        problems += _check_checkpoints(workspace, body, number, requests)
    return {"ok": not problems, "problems": problems, "request": number, "checked_ids": len(keys)}


def _check_ids(body: dict[str, Any], field: str, keys: list[str], key: str, request: int) -> list[str]:
    """The receipt's ids of ``field`` (or their hashes) are the ones the ledger recorded."""
    try:
        if body.get(field) is not None:
            given = sorted(key_text(v) for v in body[field])
        else:
            keys = [salted(key, k) for k in keys]
            given = sorted(body.get(f"{field}_sha256") or [])
    except (TypeError, SisaError):
        given = None
    if given != sorted(keys):
        return [f"the receipt's {field.replace('_', ' ')} are not those the ledger recorded for request {request}"]
    return []


def _check_recorded(body: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """The receipt's request and replaced checkpoints are what the ledger recorded."""
    problems = [f"the receipt's {name} ({(body.get('request') or {}).get(name)!r}) is not the ledger's "
                f"({found.get(name)!r})" for name in _REQUEST_FIELDS
                if name not in ("updated", "state") and (body.get("request") or {}).get(name) != found.get(name)]
    if body.get("checkpoints_replaced") != found.get("replaced", []):
        problems.append("the receipt's replaced checkpoints are not those the ledger recorded for its request")
    return problems


def _check_checkpoints(workspace: Workspace, body: dict[str, Any], request: int,
                       requests: list[dict[str, Any]]) -> list[str]:
    """Every new checkpoint the receipt names is live now, or was replaced since by a later
    request (followed along the chain of replacements), a revert or a training."""
    live = {(r.shard, r.slice): r.sha256 for r in workspace.checkpoints().checkpoints}
    later = [r for r in requests if r["request"] > request]
    versions = [v for v in read_versions(workspace.ledger_path) if v["state"] in ("done", "replaced", "reverted")]
    issued_version = (body.get("request") or {}).get("version") or 0
    retrained = any(v["kind"] == "train" and v["version"] > issued_version for v in versions)
    # the fewest slices a later revert kept: checkpoints of slices past it were reverted away
    kept = min((v.get("slices_kept", 0) for v in versions if v["kind"] == "revert" and v["version"] > issued_version),
               default=None)
    problems = []
    for item in body.get("checkpoints_replaced") or []:
        shard, slice_, sha = item.get("shard"), item.get("slice"), item.get("new")
        for r in later:
            for change in r.get("replaced", []):
                if (change["shard"], change["slice"], change["old"]) == (shard, slice_, sha):
                    sha = change["new"]
        if live.get((shard, slice_)) == sha or retrained or (kept is not None and slice_ >= kept):
            continue
        problems.append(f"checkpoint shard {shard} slice {slice_} ({str(item.get('new'))[:12]}...) named by the "
                        f"receipt is not live and no later recorded request, revert or training replaced it")
    return problems


# ------------------------------------------------------------------------------------ locate

def locate(workspace: Workspace, ids: Sequence) -> list[dict[str, Any]]:
    """Where each id is: shard, slice and the version that brought it in; or in the test rows;
    or deleted (by which request, from where); or unknown."""
    with workspace_lock(workspace.root, exclusive=False):
        manifest = workspace.manifest()
        deleted = read_ledger(workspace.ledger_path)[0]
        by_request = {key: r["request"] for r in read_requests(workspace.ledger_path) for key, _, _ in r["ids"]}
        unique = list(dict.fromkeys(ids))
        where = assign(unique, seed=manifest.settings.seed, shards=manifest.settings.shards, slices=1)
        found = _find(workspace, manifest, [(v, int(s)) for v, s in zip(unique, where.shard)
                                            if key_text(v) not in deleted])
    versions = manifest.slice_versions()
    out = []
    for value in unique:
        key = key_text(value)
        if key in deleted:
            shard, slice_ = deleted[key]
            place = "test" if shard == TEST_SHARD else "before the last training" if shard == CARRIED_SHARD else None
            out.append({"id": value, "deleted": True, "request": by_request.get(key),
                        "shard": shard if shard >= 0 else None, "slice": slice_ if shard >= 0 else None,
                        **({"where": place} if place else {})})
        elif key in found:
            shard, slice_ = found[key]
            out.append({"id": value, "deleted": False, "shard": shard, "slice": slice_,
                        "version": versions[slice_] if shard >= 0 else None,
                        **({"where": "test"} if shard == TEST_SHARD else {})})
        else:
            out.append({"id": value, "deleted": False, "unknown": True})
    return out


def _find(workspace: Workspace, manifest: WorkspaceManifest, wanted: list[tuple[Any, int]]) -> dict[str, tuple]:
    """canonical id -> (shard, slice), or (TEST_SHARD, None) for test rows, of ids present."""
    found: dict[str, tuple] = {}
    for shard in sorted({s for _, s in wanted}):
        ids, slices = file_ids(workspace, manifest.shard(shard))
        position = {key_text(v): i for i, v in enumerate(ids.tolist())}
        for value, s in wanted:
            i = position.get(key_text(value)) if s == shard else None
            if i is not None:
                found[key_text(value)] = (shard, int(slices[i]))
    rest = {key_text(v) for v, _ in wanted} - set(found)
    if rest and manifest.test:
        for v in file_ids(workspace, manifest.test)[0].tolist():
            if key_text(v) in rest:
                found[key_text(v)] = (TEST_SHARD, None)
    return found


def load_receipt(text: str, where: str) -> dict[str, Any]:
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise SisaError(f"{where} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise SisaError(f"{where} is not a sisa deletion receipt")
    return body
