"""Files sisa wrote that no manifest names: what a crash can leave behind, found by sisa's own
file names only, so a user's file is never taken for one."""

from __future__ import annotations

import re
from pathlib import Path

from sisa.workspace.files import Workspace

_DATA_NAME = re.compile(r"(shard-[0-9]{3}(-[0-9]{3,})?|test)-[0-9a-f]{12}\.parquet")


_CHECKPOINT_NAME = re.compile(r"slice-[0-9]{2}-[0-9a-f]{16}(\.weights)?\.pt")


_SHARD_FOLDER = re.compile(r"shard-[0-9]{3}")


_TEMP_NAME = re.compile(r"\..+\.tmp-.+")


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [p for p in folder.iterdir() if p.is_file() or p.is_symlink()]



def remove_orphans(workspace: Workspace) -> None:
    """Delete shard and checkpoint files that no manifest names (left by a crash)."""
    for path in orphan_files(workspace):
        path.unlink(missing_ok=True)


def orphan_files(workspace: Workspace) -> list[Path]:
    """Files sisa wrote that no manifest names (left by a crash). Only names sisa gives its own
    files count (a sha256 or id-set hash in the name): a user's file is never one of them."""
    named = {e.file for e in workspace.manifest().files()}
    live = {name for r in workspace.checkpoints().checkpoints for name, _, _ in r.files()}
    orphans = [p for p in _files(workspace.shards_dir)
               if (_DATA_NAME.fullmatch(p.name) and p.name not in named) or _TEMP_NAME.fullmatch(p.name)]
    if workspace.checkpoints_dir.is_dir() and not workspace.checkpoints_dir.is_symlink():
        orphans += [p for p in _files(workspace.checkpoints_dir) if _TEMP_NAME.fullmatch(p.name)]
        for folder in workspace.checkpoints_dir.iterdir():
            if _SHARD_FOLDER.fullmatch(folder.name) and folder.is_dir() and not folder.is_symlink():
                orphans += [p for p in _files(folder)
                            if (_CHECKPOINT_NAME.fullmatch(p.name) and f"{folder.name}/{p.name}" not in live)
                            or _TEMP_NAME.fullmatch(p.name)]
    return sorted(orphans)

