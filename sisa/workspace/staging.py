"""Replacing a workspace without ever losing it: build the new one beside it, then swap.

``sisa train`` (with or without ``--force``) writes the complete new workspace into a staging
folder ``<workdir>/.sisa-staging-XXXX`` and then swaps it in:

1. a swap record, ``<workdir>/.sisa-swap.json``, is written atomically: the files to move in
   from the staging folder and the files of the old workspace to remove. This is the commit
   point: before it the old workspace is untouched, after it the new one wins.
2. :func:`finish_swap` moves each staged file into place (manifests last), removes the old
   workspace's recorded files, then the staging folder, then the record. Every command that
   writes finishes an interrupted swap first (it is idempotent), so a crash at any point
   leaves the old workspace or the new one, never neither.

An interrupted build leaves only a staging folder; commands that write remove it, and
``sisa audit`` reports one that is still there (it may hold personal data). sisa removes only
files it recorded (the manifests name them) or folders it created under names of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from sisa.errors import SisaError
from sisa.workspace.files import Workspace, fsync_dir, make_folder

STAGING_PREFIX = ".sisa-staging-"
REPLAY_PREFIX = ".sisa-replay-"
SWAP_NAME = ".sisa-swap.json"
_SCRATCH = re.compile(rf"({re.escape(STAGING_PREFIX)}|{re.escape(REPLAY_PREFIX)})[A-Za-z0-9_]+")


def swap_path(workspace: Workspace) -> Path:
    return workspace.root / SWAP_NAME


def make_scratch(workspace: Workspace, prefix: str) -> Path:
    """A new private folder inside the workspace (so no copy of its data lands in /tmp)."""
    make_folder(workspace.root)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=workspace.root))


def scratch_folders(workspace: Workspace) -> list[Path]:
    """Staging and replay folders sisa left behind (interrupted commands)."""
    if not workspace.root.is_dir():
        return []
    keep = None
    if swap_path(workspace).exists():
        try:
            keep = json.loads(swap_path(workspace).read_text())["staging"]
        except (OSError, ValueError, KeyError, TypeError):
            keep = None
    return sorted(p for p in workspace.root.iterdir()
                  if _SCRATCH.fullmatch(p.name) and p.is_dir() and not p.is_symlink() and p.name != keep)


def remove_scratch(workspace: Workspace) -> list[Path]:
    """Remove leftover staging and replay folders; call only under the exclusive lock."""
    removed = scratch_folders(workspace)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def recorded_files(workspace: Workspace) -> list[str]:
    """Paths (relative to the workspace) of every file the workspace's manifests name."""
    from sisa.workspace.ledger import ledger_files

    # the ledger and the manifests are sisa's whatever state the manifests are in
    files = [str(p.relative_to(workspace.root)) for p in ledger_files(workspace.ledger_path)]
    files += ["checkpoints/manifest.json", "shards/manifest.json"]
    try:
        manifest = workspace.manifest()
    except SisaError:
        return files
    files += [f"shards/{e.file}" for e in manifest.files()]
    try:
        files += [f"checkpoints/{name}" for r in workspace.checkpoints().checkpoints for name, _, _ in r.files()]
    except SisaError:
        pass
    return files


def _move_order(staged: Workspace) -> list[str]:
    """Staged files, data and checkpoints first, then the ledger, then the manifests."""
    last = ["shards/ledger.sqlite", "checkpoints/manifest.json", "shards/manifest.json"]
    files = sorted(str(p.relative_to(staged.root)) for p in staged.root.rglob("*") if p.is_file())
    return [f for f in files if f not in last] + [f for f in last if f in files]


def swap_in(workspace: Workspace, staging: Path) -> None:
    """Replace ``workspace``'s files by the complete workspace in ``staging``."""
    moves = _move_order(Workspace(staging))
    if "shards/manifest.json" not in moves:
        raise ValueError("the staged workspace has no manifest")
    remove = [f for f in recorded_files(workspace) if f not in moves]
    if "shards/ledger.sqlite" in moves:  # a new ledger must not meet the old one's WAL
        remove += [f for f in ("shards/ledger.sqlite-wal", "shards/ledger.sqlite-shm") if f not in remove]
    workspace.write_json(swap_path(workspace), {"staging": staging.name, "move": moves, "remove": remove})
    finish_swap(workspace)


def finish_swap(workspace: Workspace) -> bool:
    """Complete a recorded swap (again, after a crash); False when there was none."""
    workspace.check_safe()  # no links or other users' files: the moves below must stay inside
    path = swap_path(workspace)
    if not path.exists():
        return False
    intent = workspace._read_json(path)
    staging = workspace.root / intent["staging"]
    if not _SCRATCH.fullmatch(intent["staging"]):
        raise SisaError(f"{path} names {intent['staging']!r}, which is not a sisa staging folder")
    ledger_first = [f for f in intent["remove"] if f.startswith("shards/ledger.sqlite-")]
    _unlink(workspace, ledger_first)
    for rel in intent["move"]:
        workspace.move_in(staging, rel)  # folders 0700, no link followed on either side
    for folder in {(workspace.root / rel).parent for rel in intent["move"]}:
        fsync_dir(folder)
    _unlink(workspace, [f for f in intent["remove"] if f not in ledger_first])
    shutil.rmtree(staging, ignore_errors=True)
    path.unlink()
    fsync_dir(workspace.root)
    return True


def _unlink(workspace: Workspace, relative: Iterable[str]) -> None:
    for rel in relative:
        target = workspace.root / rel
        if workspace.root.resolve() not in target.resolve().parents and not target.is_symlink():
            continue  # never outside the workspace
        target.unlink(missing_ok=True)
    for rel in relative:  # checkpoint folders left empty
        folder = (workspace.root / rel).parent
        if folder.parent == workspace.checkpoints_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def check_no_swap(workspace: Workspace) -> None:
    if swap_path(workspace).exists():
        raise SisaError(f"an interrupted 'sisa train' is half swapped in ({swap_path(workspace)}); "
                        f"run 'sisa recover --workdir {workspace.root}' to finish it")


