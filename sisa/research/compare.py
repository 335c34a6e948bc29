"""Exact deletion side by side with approximate unlearning: what ``sisa compare`` runs.

For one dataset and one forget set it trains, with the same settings:

- the *original* model on every training row (one model, as ``--shards 1 --slices 1``);
- the *retrained* model on the retain rows only: the gold standard, and the time every method's
  speedup is measured against;
- each approximate method of :mod:`sisa.research.baselines`, starting from a copy of the original;
- SISA: a sharded ensemble trained on every row, then ``sisa delete`` of the forget set (the
  timed part), and a second ensemble trained without the forget set, which the first must now
  equal bit for bit;
- optionally shadow models for a LiRA-style per-example attack.

Every model is scored by :mod:`sisa.research.evaluation`; the result is one table (a list of rows).
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sisa.data.sources import Dataset
from sisa.errors import SisaError
from sisa.research.evaluation import lira, logit_confidence, scores, summarise
from sisa.settings import Settings
from sisa.training.jobs import DataSpec

Info = Callable[[str], None]

DEFAULT_METHODS = ("ft", "neggrad", "neggrad+", "rl", "scrub", "ssd", "salun", "l1-sparse",
                   "fisher", "amnesiac")


def forget_mask(dataset: Dataset, spec: str, *, seed: int) -> np.ndarray:
    """Which training rows to forget: ``random:F`` (a share F of the rows, or F rows when
    F >= 1, drawn with ``seed``), ``class:C`` (every row labelled C) or ``ids:PATH`` (one id
    per line)."""
    kind, _, value = spec.partition(":")
    train = dataset.train
    n = len(train)
    if kind == "random":
        try:
            amount = float(value)
        except ValueError:
            raise SisaError(f"--forget random:F needs a share (0 < F < 1) or a count, got {value!r}") from None
        if not (0 < amount < 1 or (1 <= amount < float("inf") and amount == int(amount))):
            raise SisaError(f"--forget random:F needs a share (0 < F < 1) or a whole count, got {value!r}")
        count = int(round(amount * n)) if amount < 1 else int(amount)
        mask = np.zeros(n, dtype=bool)
        mask[np.random.default_rng(seed).choice(n, min(count, n), replace=False)] = True
    elif kind == "class":
        matches = [c for c in dataset.classes if str(c) == value]
        if not matches:
            raise SisaError(f"--forget class:{value}: no such class (classes: "
                            f"{', '.join(map(str, dataset.classes[:20]))})")
        mask = np.array([str(v) == value for v in train.y], dtype=bool)
    elif kind == "ids":
        from sisa.ids import key_text, parse_ids

        path = Path(value)
        if not path.is_file():
            raise SisaError(f"--forget ids:{value}: no such file")
        try:
            lines = [line.strip() for line in path.read_bytes().decode("utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise SisaError(f"--forget ids:{value} is not UTF-8 text: {exc}") from None
        wanted = {key_text(i) for i in parse_ids(lines, dataset.id_kind)}
        mask = np.array([key_text(i) in wanted for i in train.ids], dtype=bool)
        missing = len(wanted) - int(mask.sum())
        if missing:
            raise SisaError(f"--forget ids:{value}: {missing} id(s) are not training ids")
    else:
        raise SisaError(f"--forget must be random:F, class:C or ids:PATH, got {spec!r}")
    if not mask.any():
        raise SisaError(f"--forget {spec} selects no training rows")
    if mask.all():
        raise SisaError(f"--forget {spec} selects every training row; nothing would be left to train on")
    return mask


def _canonical(dataset: Dataset, settings: Settings) -> np.ndarray:
    """Training rows in the order a one-shard, one-slice workspace trains them."""
    from sisa.data.partition import assign, shard_order

    return shard_order(assign(dataset.train.ids, seed=settings.seed, shards=1, slices=1), 0)


def train_model(settings: Settings, data: DataSpec, X: np.ndarray, y: np.ndarray, *,
                amnesiac_rows: Optional[np.ndarray] = None):
    """One model on rows ``X``, ``y`` (in this order) with ``settings``: the model a workspace
    with one shard and one slice would hold for these rows. With ``amnesiac_rows`` (a mask
    over the rows), an :class:`~sisa.research.baselines.AmnesiacLog` records the updates of batches
    holding them. Returns (model, seconds, log or None)."""
    import torch

    from sisa.research.baselines import AmnesiacLog
    from sisa.training.numerics import deterministic_torch
    from sisa.training.slices import make_training_state, train_slice

    mono = dataclasses.replace(settings, shards=1, slices=1)
    started = time.perf_counter()
    with deterministic_torch(mono):
        model, optimizer, scheduler = make_training_state(mono, data, 0)
        log = AmnesiacLog(model, amnesiac_rows) if amnesiac_rows is not None else None
        Xt = torch.from_numpy(np.array(X, copy=True)).to(mono.device)
        yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(mono.device)
        train_slice(model, optimizer, scheduler, Xt, yt, settings=mono, data=data, shard=0, slice_=0,
                    epochs=mono.slice_epochs()[0], observer=log)
    model.eval()
    return model, time.perf_counter() - started, log


def _probas(model, X: np.ndarray, settings: Settings, data: DataSpec) -> np.ndarray:
    from sisa.training.slices import predict_probas

    return predict_probas(model.state_dict(), X, settings=settings, data=data)


@dataclass(frozen=True)
class _Sets:
    """The rows every model is scored on: retain, forget and test, features and class indices."""

    train: Any
    labels: np.ndarray
    forget: np.ndarray
    data: DataSpec
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]


def compare(dataset: Dataset, settings: Settings, forget: str, *,
            methods: Sequence[str] = DEFAULT_METHODS, method_params: Optional[dict[str, dict]] = None,
            sisa: bool = True, shadows: int = 0, workdir: Optional[str] = None,
            info: Info = lambda message: None) -> dict[str, Any]:
    """Train the original, retrained and SISA models, run ``methods``, score them all.

    ``settings`` are used for every model (shards and slices for SISA only). Returns
    ``{"rows": [...], "forget": ..., "settings": ..., ...}``; each row has method, RA, FA,
    TA, UA, MIA, MIA_efficacy, gap (to the retrained model), seconds and speedup.
    """
    method_params = method_params or {}
    _check_request(dataset, methods, method_params)
    sets = _sets(dataset, settings, forget)
    train, forget_rows = sets.train, sets.forget
    info(f"{dataset.spec}: {len(train)} training rows, forgetting {int(forget_rows.sum())} ({forget}); "
         f"{len(dataset.test)} test rows; model {settings.model}, {settings.epochs} epochs")
    rows = _train_and_unlearn(sets, settings, methods, method_params, info)
    retrain_s = rows[1]["seconds"]
    exactness = None
    if sisa:
        row, exactness = _sisa_row(dataset, settings, forget_ids=train.ids[forget_rows], sets=sets.X,
                                   set_labels=sets.y, workdir=workdir, info=info)
        rows.append(row)
    lira_result = None
    if shadows:
        lira_result = _lira(rows, settings, sets.data, train.X[~forget_rows], sets.labels[~forget_rows], sets.X,
                            sets.y, shadows=shadows, info=info)
    summarise(rows, rows[1])
    for row in rows:
        row["speedup"] = retrain_s / row["seconds"] if row["method"] not in ("original", "retrained") else None
        row.pop("_probas", None)
    return {"data": dataset.spec, "forget": forget, "n_train": int(len(train)),
            "n_forget": int(forget_rows.sum()), "n_test": int(len(dataset.test)), "settings": settings.to_dict(),
            "retrain_seconds": retrain_s, "rows": rows, "sisa_exactness": exactness, "lira": lira_result}


def _check_request(dataset: Dataset, methods: Sequence[str], method_params: dict[str, dict]) -> None:
    """Refuse unknown methods and missing test rows before any training."""
    from sisa.research.baselines import METHODS

    for name in methods:
        METHODS.get(name)
    for name in method_params:
        if name not in methods:
            raise SisaError(f"settings given for method {name!r}, which is not being run")
    if dataset.test is None or not len(dataset.test):
        raise SisaError("compare needs test rows (the attacks use them as non-members)")


def _sets(dataset: Dataset, settings: Settings, forget: str) -> _Sets:
    order = _canonical(dataset, settings)
    train = dataset.train.take(order)
    labels = dataset.label_index(train.y, "training data")
    mask = forget_mask(dataset, forget, seed=settings.seed)[order]
    test = dataset.test
    data = DataSpec(tuple(dataset.shape), str(train.X.dtype), float(dataset.scale), len(dataset.classes))
    return _Sets(train=train, labels=labels, forget=mask, data=data,
                 X={"retain": train.X[~mask], "forget": train.X[mask], "test": test.X.astype(train.X.dtype)},
                 y={"retain": labels[~mask], "forget": labels[mask],
                    "test": dataset.label_index(test.y, "test data")})


def _train_and_unlearn(sets: _Sets, settings: Settings, methods: Sequence[str], method_params: dict[str, dict],
                       info: Info) -> list[dict[str, Any]]:
    """The original and retrained models' rows, then one row per approximate method."""
    import torch
    import torch._dynamo  # noqa: F401  - optimizers import it on first use; keep it out of the timings

    from sisa.research.baselines import ForgetTask, run_method
    from sisa.training.numerics import deterministic_torch

    data, forget, labels = sets.data, sets.forget, sets.labels

    def evaluate(name: str, model) -> dict[str, Any]:
        probas = {k: _probas(model, X, settings, data) for k, X in sets.X.items()}
        return {"method": name, **scores(probas, sets.y, seed=settings.seed), "_probas": probas}

    with deterministic_torch(settings):
        model, original_s, log = train_model(settings, data, sets.train.X, labels,
                                             amnesiac_rows=forget if "amnesiac" in methods else None)
        info(f"original: trained on all rows in {original_s:.1f} s")
        retrained, retrain_s, _ = train_model(settings, data, sets.train.X[~forget], labels[~forget])
        info(f"retrained: trained on the retain rows in {retrain_s:.1f} s (the gold standard)")
        rows = [{**evaluate("original", model), "seconds": original_s},
                {**evaluate("retrained", retrained), "seconds": retrain_s}]
        X = {k: torch.from_numpy(np.array(v, copy=True)).to(settings.device) for k, v in sets.X.items()}
        y = {k: torch.from_numpy(v).to(settings.device) for k, v in sets.y.items()}
        for name in methods:
            task = ForgetTask(copy.deepcopy(model), X["retain"], y["retain"], X["forget"], y["forget"], data,
                              settings, amnesiac_log=log)
            done = run_method(name, task, **method_params.get(name, {}))
            rows.append({**evaluate(name, task.model), "seconds": done["seconds"], "params": done["params"]})
            info(f"{name}: {done['seconds']:.1f} s, FA {rows[-1]['FA']:.3f}, TA {rows[-1]['TA']:.3f}")
    return rows


def _sisa_row(dataset: Dataset, settings: Settings, *, forget_ids: np.ndarray, sets, set_labels,
              workdir: Optional[str], info: Info) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train SISA on every row, delete the forget rows (timed), then train SISA without them
    and check the two ensembles are the same, checkpoint for checkpoint."""
    from sisa.ops.delete import delete
    from sisa.ops.ensemble import Ensemble
    from sisa.ops.train import train_workspace
    from sisa.research.evaluation import average_gap
    from sisa.training.executors import make_executor
    from sisa.workspace.files import Workspace

    executor = make_executor("local")
    root = Path(tempfile.mkdtemp(prefix="sisa-compare-", dir=workdir))
    try:
        full, without = Workspace(root / "trained-then-deleted"), Workspace(root / "trained-without")
        trained = train_workspace(full.root, dataset, settings, executor=executor)
        info(f"sisa: trained {settings.shards} shards x {settings.slices} slices in "
             f"{trained['seconds']:.1f} s (test accuracy {trained.get('accuracy', float('nan')):.4f})")
        started = time.perf_counter()
        done = delete(full, [i.item() if hasattr(i, "item") else i for i in forget_ids], executor=executor)
        delete_s = time.perf_counter() - started
        retrained = [{"shard": r["shard"], "from_slice": r["from_slice"]} for r in done["retrained"]]
        info("sisa delete: retrained " + ", ".join(f"shard {r['shard']} from slice {r['from_slice']}"
                                                    for r in retrained) + f" in {delete_s:.1f} s")
        probas = {k: Ensemble(full).predict_proba(X) for k, X in sets.items()}
        row = {"method": "sisa", **scores(probas, set_labels, seed=settings.seed), "seconds": delete_s,
               "_probas": probas, "train_seconds": trained["seconds"],
               "retrained_shards": retrained}

        exactness, reference = _exactness(dataset, settings, forget_ids, full, without, probas, sets, executor)
        row["gap_to_sisa_retrained"] = average_gap(row, scores(reference, set_labels, seed=settings.seed))
        info(f"sisa trained without the forget rows: checkpoints "
             f"{'identical' if exactness['identical_checkpoints'] else 'DIFFERENT'}, largest probability "
             f"difference {exactness['max_proba_difference']:.3g}")
        return row, exactness
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _exactness(dataset: Dataset, settings: Settings, forget_ids: np.ndarray, full, without, probas, sets,
               executor) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train SISA without the forget rows into ``without`` and compare it with ``full`` (trained,
    then deleted): checkpoint for checkpoint, and by the largest probability difference."""
    from sisa.ids import key_text
    from sisa.ops.ensemble import Ensemble
    from sisa.ops.train import train_workspace

    gone = {key_text(i) for i in forget_ids}
    keep = np.array([key_text(i) not in gone for i in dataset.train.ids], dtype=bool)
    train_workspace(without.root, dataclasses.replace(dataset, train=dataset.train.take(keep)), settings,
                    executor=executor)
    reference = {k: Ensemble(without).predict_proba(X) for k, X in sets.items()}

    def key(r):
        return r.shard, r.slice, r.sha256, r.ids_sha256

    expected = [key(r) for r in without.checkpoints().checkpoints]
    return {
        "identical_checkpoints": [key(r) for r in full.checkpoints().checkpoints] == expected,
        "checkpoints": len(expected),
        "max_proba_difference": float(max(np.abs(probas[k] - reference[k]).max() for k in sets)),
    }, reference


def _lira(rows: list[dict[str, Any]], settings: Settings, data: DataSpec, retain_X: np.ndarray,
          retain_y: np.ndarray, sets, set_labels, *, shadows: int, info: Info) -> dict[str, Any]:
    """Train ``shadows`` models on retain plus a random half of the candidates (forget and
    test rows), then score every row's model with :func:`sisa.research.evaluation.lira`."""
    from sisa.training.jobs import derive_seed

    candidates = np.concatenate([sets["forget"], sets["test"]])
    labels = np.concatenate([set_labels["forget"], set_labels["test"]])
    members = np.concatenate([np.ones(len(sets["forget"])), np.zeros(len(sets["test"]))])
    stats, inside = [], []
    started = time.perf_counter()
    for k in range(shadows):
        rng = np.random.default_rng(derive_seed(settings.seed, "shadow", k))
        take = rng.random(len(candidates)) < 0.5
        shadow_settings = dataclasses.replace(settings, seed=derive_seed(settings.seed, "shadow", k) % 2**31)
        model, _, _ = train_model(shadow_settings, data, np.concatenate([retain_X, candidates[take]]),
                                  np.concatenate([retain_y, labels[take]]))
        stats.append(logit_confidence(_probas(model, candidates, settings, data), labels))
        inside.append(take)
        info(f"LiRA shadow model {k + 1}/{shadows} trained")
    stats, inside = np.stack(stats), np.stack(inside)
    for row in rows:
        probas = row.get("_probas")
        if probas is None or row.get("diverged"):
            continue
        target = logit_confidence(np.concatenate([probas["forget"], probas["test"]]), labels)
        attack = lira(target, stats, inside, members)
        row["LiRA_auc"] = attack["auc"]
        row["LiRA_tpr_at_1pct_fpr"] = attack["tpr_at_1pct_fpr"]
    return {"shadows": shadows, "seconds": time.perf_counter() - started}


COLUMNS = (("method", "method", "{}"), ("RA", "RA", "{:.3f}"), ("FA", "FA", "{:.3f}"), ("TA", "TA", "{:.3f}"),
           ("MIA", "MIA acc", "{:.3f}"), ("MIA_efficacy", "MIA-eff", "{:.3f}"), ("LiRA_auc", "LiRA AUC", "{:.3f}"),
           ("gap", "avg gap", "{:.3f}"), ("seconds", "seconds", "{:.1f}"), ("speedup", "speedup", "{:.1f}x"))


def format_table(result: dict[str, Any], markdown: bool = False) -> str:
    """The comparison as a text (or Markdown) table, one row per model."""
    columns = [c for c in COLUMNS if any(row.get(c[0]) is not None for row in result["rows"])]
    cells = [[c[1] for c in columns]]
    for row in result["rows"]:
        cells.append([c[2].format(row[c[0]]) if row.get(c[0]) is not None and row[c[0]] == row[c[0]] else "-"
                      for c in columns])
        if row.get("diverged"):
            cells[-1][0] += " (diverged)"
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in cells)


def write_chart(result: dict[str, Any], path: Path) -> bool:
    """A PNG: each model's gap to the retrained model against its speedup. Needs matplotlib
    (``pip install 'sisa[plots]'``); returns False without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = [r for r in result["rows"] if r.get("speedup") and r.get("gap") is not None and np.isfinite(r["gap"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in rows:
        colour = "tab:red" if row["method"] == "sisa" else "tab:blue"
        left.scatter(row["speedup"], row["gap"], color=colour)
        left.annotate(row["method"], (row["speedup"], row["gap"]), textcoords="offset points", xytext=(4, 3),
                      fontsize=8)
    left.set_xscale("log")
    left.set_xlabel("speedup over retraining (log scale)")
    left.set_ylabel("average gap to the retrained model")
    left.set_title("cost against closeness to retraining")
    names = [r["method"] for r in result["rows"]]
    x = np.arange(len(names))
    for offset, key in ((-0.2, "FA"), (0.0, "TA"), (0.2, "MIA")):
        right.bar(x + offset, [r[key] if r.get(key) is not None and np.isfinite(r[key]) else 0
                               for r in result["rows"]], width=0.2, label=key)
    right.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    right.set_ylim(0, 1.15)
    right.legend(fontsize=8, loc="upper center", ncol=3)
    right.set_title("forget acc., test acc., MIA accuracy")
    fig.suptitle(f"{result['data']}, forget {result['forget']} ({result['n_forget']} rows), "
                 f"{result['settings']['model']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
