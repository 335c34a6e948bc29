"""An inference bundle: the ensemble a workspace predicts with, without its training rows.

A workspace holds the people's rows (shards/) and the training state (checkpoints/); neither
should leave the machine that honours deletions. :func:`export_bundle` writes what prediction
needs into a folder of its own: one weights file per shard model (its ``state_dict`` alone, as
``torch.save`` writes it) and ``bundle.json``, which holds the settings, how to read rows
(shape, dtype, scale, classes, feature and column names), the shard sizes aggregation weighs,
the sha256 of every file, and the workspace position the bundle reflects: the workspace
version, the number of deletion requests, and the checkpoint each shard model came from.

:func:`load_bundle` checks every file against its sha256 before it loads anything and gives a
:class:`Bundle` that predicts the same numbers as :class:`~sisa.ops.ensemble.Ensemble` did.
:func:`check_bundle` says whether a bundle still matches its workspace: a deletion that
retrained a shard makes it stale, and so a deletion request must be followed by a new export
before the old bundle's model can be said to have forgotten the rows.

>>> import tempfile, sisa
>>> from sisa.workspace.files import Workspace
>>> with tempfile.TemporaryDirectory() as tmp:
...     X, y = np.eye(4, dtype=np.float32).repeat(5, 0), np.arange(20) % 2
...     _ = sisa.SISAClassifier(tmp + "/ws", shards=2, slices=1, epochs=1).fit(X, y)
...     _ = export_bundle(Workspace(tmp + "/ws"), tmp + "/bundle")
...     load_bundle(tmp + "/bundle").predict_proba(X[:3]).shape
(3, 2)
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from sisa.aggregation import aggregate
from sisa.errors import ModelChanged, SisaError
from sisa.models import check_source
from sisa.ops.ensemble import Ensemble, check_rows, stacked_probas
from sisa.settings import Settings
from sisa.training.jobs import DataSpec
from sisa.training.numerics import deterministic_torch
from sisa.workspace.files import (
    Workspace,
    atomic_write,
    checkpoint_bytes,
    fsync_dir,
    json_checksum,
    sha256_bytes,
)
from sisa.workspace.ledger import STATES, has_open_work, read_counts, utc_now
from sisa.workspace.lock import workspace_lock
from sisa.workspace.manifest import CheckpointRecord

BUNDLE_FORMAT = "sisa-bundle/1"
BUNDLE_FILE = "bundle.json"
PREDICT_SOURCE_FIELDS = ("spec", "id_col", "label_col", "test_fraction", "image_size")
"""The recorded source fields ``sisa predict`` reads rows with (not ``test_spec``: a bundle is
never evaluated on the workspace's test rows)."""


# ------------------------------------------------------------------------------------ export

def export_bundle(workspace: Workspace, output_dir: os.PathLike | str, *, force: bool = False,
                  torchscript: bool = False) -> dict[str, Any]:
    """Write the ensemble ``workspace`` predicts with into the new folder ``output_dir``.

    The shard models are those :meth:`Ensemble.final_records` names. A workspace with a
    deletion (or an add or revert) not yet committed is refused: its models may still have
    seen the rows, and a bundle lives on after the workspace forgets them (``sisa recover``
    finishes the work; the CLI does so first). The folder is built beside ``output_dir`` and
    renamed into place whole. An existing ``output_dir`` is replaced only when it is a bundle
    sisa wrote (nothing else in it) and ``force``; any other folder is left alone.
    ``torchscript``: also write each shard model traced (``torch.jit.trace``) to take rows as
    stored and give class probabilities, for serving without sisa.

    Returns the folder, its files and the position the bundle reflects.
    """
    output = Path(output_dir)
    _refuse_workspace_output(output, workspace)
    _refuse_existing(output, force)
    with workspace_lock(workspace.root, exclusive=False):
        _refuse_open_work(workspace)
        ensemble = Ensemble(workspace)
        check_source(ensemble.settings.model, ensemble.manifest.model_source)
        records = ensemble.final_records()
        weights = [workspace.load_weights(record) for record in records]
        position = _position(ensemble, records, read_counts(workspace.ledger_path))
    files, models = _shard_model_files(ensemble, records, weights, torchscript=torchscript)
    meta = _bundle_json(ensemble, models, position)
    files[BUNDLE_FILE] = (json.dumps(dict(meta, checksum=json_checksum(meta)), indent=1, sort_keys=True)
                          + "\n").encode()
    _write_folder(output, files, force)
    return {"output": str(output), "shards": [m["shard"] for m in models], "files": sorted(files),
            "bytes": sum(len(data) for data in files.values()), "version": position["version"],
            "requests": position["requests"], "torchscript": torchscript}


def _shard_model_files(ensemble: Ensemble, records: list[CheckpointRecord], weights: list[dict[str, Any]], *,
                       torchscript: bool) -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    """The bytes of each shard model's files by name, and each model's entry in bundle.json:
    its shard, its rows (what size-weighted aggregation weighs) and its files' sha256."""
    files: dict[str, bytes] = {}
    models = []
    sizes = ensemble.shard_sizes()
    for record, state in zip(records, weights):
        name = f"shard-{record.shard:03d}.pt"
        files[name] = checkpoint_bytes(state)
        model = {"shard": record.shard, "rows": sizes[record.shard], "file": name, "sha256": sha256_bytes(files[name])}
        if torchscript:
            scripted = f"shard-{record.shard:03d}.torchscript.pt"
            files[scripted] = _traced_bytes(state, ensemble.settings, ensemble.data)
            model["torchscript"] = {"file": scripted, "sha256": sha256_bytes(files[scripted])}
        models.append(model)
    return files, models


def _refuse_workspace_output(output: Path, workspace: Workspace) -> None:
    """A bundle never goes where sisa keeps the workspace's own files: the orphan sweep
    would remove it, and it would sit beside the very rows it is meant to leave behind."""
    target = output.resolve()
    for folder in (workspace.shards_dir, workspace.checkpoints_dir):
        if target == folder.resolve() or folder.resolve() in target.parents:
            raise SisaError(f"--output {output} is inside the workspace's {folder.name}/ folder, which holds "
                            f"sisa's own files; export the bundle somewhere else")
    if target == workspace.root.resolve():
        raise SisaError(f"--output {output} is the workspace itself; export the bundle into a folder of its own")
    for folder in target.parents:
        if (folder / BUNDLE_FILE).is_file():
            raise SisaError(f"--output {output} is inside the bundle {folder}, which holds only a bundle's files; "
                            f"export into a folder of its own")


def _refuse_open_work(workspace: Workspace) -> None:
    if has_open_work(workspace.ledger_path):
        raise SisaError(f"the workspace {workspace.root} has a deletion (or an add or revert) that is not yet "
                        f"committed: a bundle exported now could hold a model trained on deleted rows. Run "
                        f"'sisa recover --workdir {workspace.root}', then export")


def _position(ensemble: Ensemble, records: list[CheckpointRecord], counts: dict[str, int]) -> dict[str, Any]:
    """What the exported models reflect: the workspace version, the deletion requests the ledger
    holds (``counts``: :func:`read_counts`), and the checkpoint each shard model is, as the
    checkpoints manifest records it."""
    return {"version": ensemble.manifest.version, "requests": sum(counts[state] for state in STATES),
            "checkpoints": [{"shard": r.shard, "slice": r.slice, "sha256": r.sha256,
                             "weights_sha256": r.weights_sha256} for r in records]}


def _bundle_json(ensemble: Ensemble, models: list[dict[str, Any]], position: dict[str, Any]) -> dict[str, Any]:
    from sisa import __version__

    data = ensemble.manifest.data
    source = {name: data.source_value(name) for name in PREDICT_SOURCE_FIELDS if data.source_value(name) is not None}
    return {
        "format": BUNDLE_FORMAT,
        "sisa_version": __version__,
        "created": utc_now(),
        "settings": ensemble.settings.to_dict(),
        "model_source": ensemble.manifest.model_source,
        "environment": ensemble.checkpoints.environment,
        "data": {"shape": list(data.shape), "dtype": data.dtype, "scale": data.scale, "classes": list(data.classes),
                 "feature_names": ensemble.feature_names, "source": source},
        "models": models,
        "position": position,
    }


def _traced_bytes(weights: dict[str, Any], settings: Settings, data: DataSpec) -> bytes:
    """One shard model as TorchScript that takes rows as stored (any shape ``data.shape``,
    ``data.dtype``) and gives float64 class probabilities, as :func:`predict_probas` computes
    them (the same operations; a TorchScript runtime may still round differently)."""
    import torch

    from sisa.models import build_model

    class Probabilities(torch.nn.Module):
        def __init__(self, model: torch.nn.Module, scale: float) -> None:
            super().__init__()
            self.model, self.scale = model, scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(x.float().mul(self.scale)).double(), dim=1)

    model = build_model(settings.model, data.shape, data.n_classes)
    model.load_state_dict(weights)
    model.requires_grad_(False)  # a served model's output needs no autograd graph
    example = torch.from_numpy(np.zeros((2, *data.shape), dtype=data.dtype))
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # recent torch marks TorchScript deprecated in favour of torch.export (docs/commands.md
        # says so); the user asked for TorchScript, so the warnings would only be noise
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        torch.jit.save(torch.jit.trace(Probabilities(model.eval(), data.scale).eval(), example), buffer)
    return buffer.getvalue()


# -------------------------------------------------------------------------- the output folder

def _refuse_existing(output: Path, force: bool) -> None:
    """Refuse an existing ``output`` unless it is a bundle (nothing but a bundle's files) and
    ``force``: replacing a folder removes it, and sisa removes only what it wrote."""
    if not os.path.lexists(output):
        return
    reason = _not_a_bundle(output)
    if reason:
        raise SisaError(f"--output {output} already exists and {reason}. sisa writes a new folder and replaces "
                        f"only a bundle it wrote: choose a new folder name")
    if not force:
        raise SisaError(f"--output {output} already holds a sisa bundle; export with --force to replace it")


def _not_a_bundle(path: Path) -> Optional[str]:
    """Why ``path`` is not a bundle that may be replaced, or None when it is one."""
    if path.is_symlink() or not path.is_dir():
        return "is not a folder"
    if not (path / BUNDLE_FILE).is_file():
        return f"is not a sisa bundle (it has no {BUNDLE_FILE})"
    try:
        meta = read_bundle_json(path)
        named = {BUNDLE_FILE} | {f for model in meta["models"] for f in _files_named(model)}
    except SisaError as exc:
        return f"is not a bundle sisa can vouch for: {exc}"
    except (KeyError, TypeError):
        return f"is not a sisa bundle (its {BUNDLE_FILE} lists no models)"
    others = sorted(name for name in os.listdir(path) if name not in named or not (path / name).is_file()
                    or (path / name).is_symlink())
    if others:
        return f"holds files a bundle does not ({', '.join(others[:5])})"
    return None


def _files_named(model: dict[str, Any]) -> list[str]:
    scripted = model.get("torchscript")
    return [model["file"]] + ([scripted["file"]] if scripted else [])


def _write_folder(output: Path, files: dict[str, bytes], force: bool) -> None:
    """Build the bundle in a hidden sibling folder, then rename it to ``output``: a crash leaves
    the old folder or the new one, never half a bundle under its name."""
    output.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(6)
    staging = output.parent / f".{output.name}.tmp-{token}"
    os.mkdir(staging)  # 0777 less the umask: the user's folder to ship, like predict's output
    try:
        for name, data in files.items():
            atomic_write(staging / name, data, private=False)
        _refuse_existing(output, force)  # again: the folder may have appeared while we wrote
        if os.path.lexists(output):
            _swap(staging, output, output.parent / f".{output.name}.old-{token}")
        else:
            os.rename(staging, output)
        fsync_dir(output.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def _swap(staging: Path, output: Path, retired: Path) -> None:
    """Replace the bundle at ``output`` by ``staging`` (two renames: POSIX cannot exchange
    two folders in one), restoring the old one if the second rename fails."""
    os.rename(output, retired)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(retired, output)
        raise
    shutil.rmtree(retired)


# -------------------------------------------------------------------------------------- load

def read_bundle_json(path: os.PathLike | str) -> dict[str, Any]:
    """``bundle.json`` of the bundle at ``path``, checked against its checksum and format
    (the weights files are checked by :func:`load_bundle`)."""
    file = Path(path) / BUNDLE_FILE
    try:
        meta = json.loads(file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise SisaError(f"{path} is not a sisa bundle: it has no {BUNDLE_FILE} (export one with 'sisa export "
                        f"--output DIR')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SisaError(f"cannot read {file}: {exc}") from None
    if not isinstance(meta, dict):
        raise SisaError(f"{file} is not a JSON object")
    found = meta.get("format")
    if found != BUNDLE_FORMAT:
        if isinstance(found, str) and found.startswith("sisa-bundle/"):
            raise SisaError(f"{file} is in format {found} (written by sisa {meta.get('sisa_version')}); this sisa "
                            f"reads {BUNDLE_FORMAT}. Load it with the sisa that wrote it, or export it again")
        raise SisaError(f"{file} is not a {BUNDLE_FORMAT} bundle description")
    if meta.get("checksum") != json_checksum(meta):
        raise SisaError(f"{file} was edited or damaged: its checksum does not match its contents; export the "
                        f"bundle again")
    return meta


def load_bundle(path: os.PathLike | str, *, device: Optional[str] = None) -> "Bundle":
    """The bundle at ``path``, every file checked against its sha256 before any is loaded.

    ``device`` (``cpu`` or ``cuda``): predict there instead of on the device the workspace
    trained on (the numbers are then those of that device, not bit-identical to training's).
    """
    path = Path(path)
    meta = read_bundle_json(path)
    with _fields_of(path):
        settings = Settings.from_dict(meta["settings"])
        if device is not None:
            settings = settings.replace(device=device)
        data = meta["data"]
        spec = DataSpec(tuple(int(d) for d in data["shape"]), str(data["dtype"]), float(data["scale"]),
                        len(data["classes"]))
        models = list(meta["models"])
        if not models:
            raise SisaError(f"{path / BUNDLE_FILE} names no shard model; export the bundle again")
        contents = [_checked_file(path, model["file"], model["sha256"]) for model in models]
        for model in models:
            if model.get("torchscript"):
                _checked_file(path, model["torchscript"]["file"], model["torchscript"]["sha256"])
        weights = [_load_weights(data_bytes, path / model["file"]) for data_bytes, model in zip(contents, models)]
        sizes = [int(model["rows"]) for model in models]
        if any(size < 1 for size in sizes) or len({model["file"] for model in models}) != len(models):
            raise SisaError(f"{path / BUNDLE_FILE} is malformed (a model of no rows, or two models in one file); "
                            f"export the bundle again")
        if len(set(map(repr, data["classes"]))) != len(data["classes"]):
            raise SisaError(f"{path / BUNDLE_FILE} lists a class twice; export the bundle again")
        return Bundle(path, meta, settings, spec, weights, sizes, [str(model["sha256"]) for model in models])


@contextmanager
def _fields_of(path: Path) -> Iterator[None]:
    """A field of ``bundle.json`` that is missing or of the wrong type becomes a SisaError
    naming the file (the checksum rules out damage, not a bundle.json written by hand)."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, SisaError):
            raise
        raise SisaError(f"{path / BUNDLE_FILE} is malformed ({type(exc).__name__}: {exc}); export the bundle "
                        f"again") from None


def _checked_file(folder: Path, name: Any, sha256: Any) -> bytes:
    """The bytes of bundle file ``name``, refused unless they match ``sha256``."""
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise SisaError(f"{folder / BUNDLE_FILE} names a file outside the bundle ({name!r}); export the bundle "
                        f"again")
    try:
        data = (folder / name).read_bytes()
    except FileNotFoundError:
        raise SisaError(f"bundle file {folder / name} is missing; export the bundle again") from None
    except OSError as exc:
        raise SisaError(f"cannot read bundle file {folder / name}: {exc}") from None
    if sha256_bytes(data) != sha256:
        raise SisaError(f"bundle file {folder / name} does not match the sha256 {BUNDLE_FILE} records: it was "
                        f"changed or damaged; export the bundle again")
    return data


def _load_weights(data: bytes, shown: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SisaError(f"refusing to load bundle file {shown}: {reason}") from None


class Bundle:
    """An exported ensemble: predicts as the workspace's :class:`Ensemble` did, bit for bit on
    the same numerics environment (``environment``), with the same aggregation.

    Attributes: ``classes_`` (array of labels; ``classes`` as a list), ``settings``,
    ``n_features_in_`` (as :class:`sisa.SISAClassifier` counts them), ``feature_names``,
    ``source`` (the id and label column names and the data spec the rows were read with),
    ``shards`` (the shard of each model), ``sizes`` (their rows, as aggregation weighs them)
    and ``position`` (the workspace version, deletion requests and checkpoints it reflects).
    """

    def __init__(self, path: Path, meta: dict[str, Any], settings: Settings, data: DataSpec,
                 weights: list[dict[str, Any]], sizes: list[int], sha256s: Sequence[str] = ()) -> None:
        self.path = path
        self.settings = settings
        self.data = data
        self.classes: list = list(meta["data"]["classes"])
        self.classes_ = np.asarray(self.classes)
        names = meta["data"].get("feature_names")
        self.feature_names: Optional[list[str]] = None if names is None else list(names)
        self.source: dict[str, Any] = dict(meta["data"].get("source") or {})
        self.model_source: Optional[dict[str, Any]] = meta.get("model_source")
        self.environment: dict[str, Any] = dict(meta.get("environment") or {})
        self.shards = [int(model["shard"]) for model in meta["models"]]
        self.sizes = sizes
        self.position: dict[str, Any] = meta["position"]
        self.n_features_in_ = int(data.shape[0]) if data.shape else 1
        self._weights = weights
        self.sha256s = list(sha256s)
        """The sha256 of each model's weights file (none for models held in memory)."""
        self._check_model_code()

    @classmethod
    def from_ensemble(cls, ensemble: Ensemble) -> "Bundle":
        """The models ``ensemble`` predicts with, held in memory rather than written out (what a
        pickled :class:`sisa.SISAClassifier` of a temporary workspace carries)."""
        records = ensemble.final_records()
        weights = [ensemble.workspace.load_weights(record) for record in records]
        sizes = ensemble.shard_sizes()
        models = [{"shard": record.shard, "rows": sizes[record.shard]} for record in records]
        position = _position(ensemble, records, read_counts(ensemble.workspace.ledger_path))
        return cls(ensemble.workspace.root, _bundle_json(ensemble, models, position), ensemble.settings,
                   ensemble.data, weights, [model["rows"] for model in models])

    def _check_model_code(self) -> None:
        """A model of one's own must be the code its weights were trained with (the workspace's
        advice, --accept-model-change, does not apply to a bundle)."""
        if ":" in self.settings.model and not self.model_source:
            raise SisaError(f"the bundle names a model of one's own ({self.settings.model}) but records no sha256 of "
                            f"its source, so sisa cannot tell that the code it would import is the code the weights "
                            f"were trained with; export the bundle again")
        try:
            check_source(self.settings.model, self.model_source)
        except ModelChanged as exc:
            raise SisaError(f"{exc.summary}. The bundle's models were trained with the recorded code and would run "
                            f"other code here: put that file back where Python imports it from, or export a new "
                            f"bundle from a workspace trained with this code") from None

    def shard_probas(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities of every shard model, shape (shards, rows, classes)."""
        X = check_rows(self._in_trained_order(X), self.data.shape)
        self._check_model_code()
        with deterministic_torch(self.settings):
            return stacked_probas(self._weights, X, settings=self.settings, data=self.data)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Aggregated class probabilities, shape (rows, classes), columns in ``classes_`` order."""
        return aggregate(self.settings.aggregation, self.shard_probas(X), self.sizes)

    def _in_trained_order(self, X: Any) -> Any:
        """A table's columns (a pandas DataFrame) taken by name in the training data's order,
        as ``sisa predict`` reads a file: a reordered table gives the same predictions."""
        columns = getattr(X, "columns", None)
        if columns is None or self.feature_names is None:
            return X
        names = [str(c) for c in columns]
        missing = [name for name in self.feature_names if name not in names]
        if missing:
            raise SisaError(f"the rows lack feature column(s) {', '.join(missing[:5])} that the models were trained on")
        return np.asarray(X)[:, [names.index(name) for name in self.feature_names]]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


# ------------------------------------------------------------------------------------- check

def check_bundle(workspace: Workspace, path: os.PathLike | str) -> dict[str, Any]:
    """Whether the bundle at ``path`` still holds the models ``workspace`` would export now.

    A shard whose final checkpoint differs (retrained after a deletion, or after an add or
    revert) is ``changed``; a shard that has a model only now is ``added``, one that has none
    now (emptied, or waiting for a deletion to be retrained) ``removed``. Deletion requests
    newer than the bundle that touched no exported model (an id of the test rows only) leave
    it current; ``newer_requests`` still counts them.
    """
    bundle = load_bundle(path)  # every file checked against bundle.json's sha256
    with workspace_lock(workspace.root, exclusive=False):
        ensemble = Ensemble(workspace)
        counts = read_counts(workspace.ledger_path)
        try:
            records = ensemble.final_records()
        except SisaError:  # no shard has a model now (all emptied, or waiting for retraining)
            records = []
        now = _position(ensemble, records, counts)
        settings = ensemble.settings.to_dict()
        classes = list(ensemble.classes)
        # the sha256 of each file an export now would write (a workspace of format 1 records none)
        live = {r.shard: sha256_bytes(checkpoint_bytes(workspace.load_weights(r))) for r in records}
    with _fields_of(Path(path)):
        then = bundle.position
        bundle_requests = int(then.get("requests") or 0)
    # bundle.json's checksum is no signature: compare the weights files' own sha256s (checked
    # above) with the workspace's models, so an edited bundle.json cannot vouch for old weights
    exported = {shard: sha for shard, sha in zip(bundle.shards, bundle.sha256s)}
    changed = sorted(s for s in exported.keys() & live.keys() if exported[s] != live[s])
    added, removed = sorted(live.keys() - exported.keys()), sorted(exported.keys() - live.keys())
    settings_changed = bundle.settings.to_dict() != settings or bundle.classes != classes
    return {
        "current": not (changed or added or removed or settings_changed),
        "bundle": str(path),
        "changed": changed,
        "added": added,
        "removed": removed,
        "settings_changed": settings_changed,
        "bundle_version": then.get("version"),
        "workspace_version": now["version"],
        "bundle_requests": then.get("requests"),
        "workspace_requests": now["requests"],
        "newer_requests": max(0, now["requests"] - bundle_requests),
        "pending_requests": counts["pending"] + counts["retrained"],
    }
