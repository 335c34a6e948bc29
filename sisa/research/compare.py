"""Exact deletion side by side with approximate unlearning: what ``sisa compare`` runs.

For one dataset and one forget set it trains, with the same settings, for each training seed:

- the *original* model on every training row (one model, as ``--shards 1 --slices 1``);
- the *retrained* model on the retain rows only: the monolithic gold standard, and the time
  every method's speedup is measured against;
- each approximate method of :mod:`sisa.research.baselines`, starting from a copy of the original;
- SISA: a sharded ensemble trained on every row (*sisa-original*), then ``sisa delete`` of the
  forget set (*sisa-delete*, the timed part), and a second ensemble trained without the forget
  set (*sisa-retrained*), which the first must now equal checkpoint for checkpoint;
- optionally shadow models for a LiRA-style per-example attack, of both shapes: monolithic
  models for the monolithic rows, SISA ensembles for the SISA rows (trained once, shared by the
  seeds: the attacker's shadows do not depend on the target's seed);
- optionally the NeurIPS 2023 unlearning challenge's forgetting quality over ``fq_models`` seeds:
  every model above trained (and every method run) once per seed, each method's models against
  as many of its reference's (:func:`forgetting_rows`). The first ``seeds`` of them are the
  table's seeds; of the others only the forget rows' statistic and RA, TA are kept.

Every model is judged against the retrained model *of its own kind*: monolithic models against
*retrained*, SISA against *sisa-retrained* (:data:`REFERENCE`); the gap to the monolithic
*retrained* is reported beside it. The attacks are scored over ``draws`` random draws of their
subsamples and splits, and every score is a mean and standard deviation over seeds x draws
(:func:`aggregate`), with the simple MIA's null (two halves of the test rows) beside it.

The pieces are separate so that scores needing many models per method (the challenge's
forgetting quality, U-LiRA) reuse them: :func:`train_seed` returns every model of one seed
as a :class:`ModelRun` (its class probabilities on the scored rows), :func:`train_shadows`
trains shadow models of a given shape.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from sisa.data.sources import Dataset, Table
from sisa.errors import SisaError
from sisa.research.evaluation import (
    ACCURACY_METRICS,
    ATTACK_METRICS,
    CHANCE_NAMES,
    FQ_BIN_WIDTH,
    FQ_DELTA,
    accuracies,
    attack_scores,
    average_gap,
    challenge_score,
    chance_sd,
    diverged,
    lira,
    logit_confidence,
    max_finite_epsilon,
    null_forgetting_quality,
    small_sample_warnings,
    summary,
)
from sisa.settings import Settings
from sisa.training.jobs import DataSpec, derive_seed

Info = Callable[[str], None]

DEFAULT_METHODS = ("ft", "neggrad", "neggrad+", "rl", "scrub", "ssd", "salun", "l1-sparse",
                   "fisher", "amnesiac")
DEFAULT_DRAWS = 20

MONOLITHIC, SISA = "monolithic", "sisa"
REFERENCE = {MONOLITHIC: "retrained", SISA: "sisa-retrained"}
"""Each family's reference: the model of that kind trained without the forget rows."""
MONO_REFERENCE = REFERENCE[MONOLITHIC]
SISA_ROWS = ("sisa-original", "sisa-delete", "sisa-retrained")
NOT_TIMED = ("original", "retrained", "sisa-original", "sisa-retrained")
"""Rows that are trainings, not ways of forgetting: no speedup."""

SEED_METRICS = ACCURACY_METRICS + ("LiRA_auc", "LiRA_tpr_at_1pct_fpr", "seconds", "speedup", "speedup_own_ref")
"""One value per training seed (no random draw in them)."""
DRAW_METRICS = ATTACK_METRICS + ("gap_own_ref", "gap_mono_retrain")
"""One value per seed and draw."""


# -- the forget set

@dataclass(frozen=True)
class ForgetSet:
    """The rows to forget: ``mask`` over the training rows; ``test_mask`` over the test rows,
    the test rows ``ids:`` named (like ``sisa delete``, compare takes them out of the test rows:
    no model is scored on them, and SISA's deletion purges them from its workspace)."""

    spec: str
    mask: np.ndarray
    test_mask: np.ndarray

    @property
    def n_test_removed(self) -> int:
        return int(self.test_mask.sum())


def forget_set(dataset: Dataset, spec: str, *, seed: int, ids: Optional[Sequence[str]] = None) -> ForgetSet:
    """Which rows to forget: ``random:F`` (a share F of the training rows, or F rows when
    F >= 1, drawn with ``seed``), ``class:C`` (every training row labelled C) or ``ids:PATH``
    (ids as text, one per line of PATH, or ``ids`` when given: the command line reads PATH as
    ``sisa delete --ids-file`` does). ``ids:`` takes the ids ``sisa delete`` takes: training
    ids, and test ids, which leave the test rows; unknown ids are refused by name."""
    kind, _, value = spec.partition(":")
    train = dataset.train
    n = len(train)
    no_test = np.zeros(len(dataset.test) if dataset.test is not None else 0, dtype=bool)
    test_mask = no_test
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
        mask, test_mask = _ids_masks(dataset, spec, value, ids)
    else:
        raise SisaError(f"--forget must be random:F, class:C or ids:PATH, got {spec!r}")
    if not mask.any():
        extra = (f" (its {int(test_mask.sum())} id(s) are all test rows: nothing to forget from training)"
                 if test_mask.any() else "")
        raise SisaError(f"--forget {spec} selects no training rows{extra}")
    if mask.all():
        raise SisaError(f"--forget {spec} selects every training row; nothing would be left to train on")
    if dataset.test is not None and test_mask.sum() == len(dataset.test):
        raise SisaError(f"--forget {spec} names every test row; the attacks need test rows as non-members")
    return ForgetSet(spec, mask, test_mask)


def _ids_masks(dataset: Dataset, spec: str, path: str, ids: Optional[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
    from sisa.ids import id_mask, key_text, parse_ids

    if ids is None:
        file = Path(path)
        if not file.is_file():
            raise SisaError(f"--forget ids:{path}: no such file")
        try:
            ids = [line.strip() for line in file.read_bytes().decode("utf-8-sig").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise SisaError(f"--forget ids:{path} is not UTF-8 text: {exc}") from None
    if not ids:
        raise SisaError(f"--forget ids:{path} names no ids")
    wanted = list(dict.fromkeys(parse_ids(ids, dataset.id_kind)))
    keys = {key_text(i) for i in wanted}
    mask = id_mask(dataset.train.ids, keys)
    test_ids = dataset.test.ids if dataset.test is not None else np.array([], dtype=dataset.train.ids.dtype)
    test_mask = id_mask(test_ids, keys)
    found = {key_text(i) for i in dataset.train.ids[mask].tolist() + test_ids[test_mask].tolist()}
    unknown = [i for i in wanted if key_text(i) not in found]
    if unknown:
        shown = ", ".join(map(str, unknown[:10])) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise SisaError(f"--forget {spec}: {len(unknown)} of {len(wanted)} id(s) are neither training nor test ids "
                        f"(sisa delete refuses them too): {shown}")
    return mask, test_mask


# -- training

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
class Sets:
    """The rows every model is scored on, in the dataset's order (the same for every seed):
    retain, forget and test features (``X``), class indices (``y``) and raw labels (``raw``)."""

    forget: ForgetSet
    data: DataSpec
    X: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]

    @property
    def n(self) -> dict[str, int]:
        return {k: int(len(v)) for k, v in self.y.items()}


def make_sets(dataset: Dataset, chosen: ForgetSet) -> Sets:
    train, test = dataset.train, dataset.test
    mask, keep = chosen.mask, ~chosen.test_mask
    labels = dataset.label_index(train.y, "training data")
    data = DataSpec(tuple(dataset.shape), str(train.X.dtype), float(dataset.scale), len(dataset.classes))
    return Sets(forget=chosen, data=data,
                X={"retain": train.X[~mask], "forget": train.X[mask], "test": test.X[keep].astype(train.X.dtype)},
                y={"retain": labels[~mask], "forget": labels[mask],
                   "test": dataset.label_index(test.y[keep], "test data")},
                raw={"retain": train.y[~mask], "forget": train.y[mask], "test": test.y[keep]})


@dataclass
class ModelRun:
    """One model of one training seed: its class probabilities on the scored rows (``probas``,
    keyed retain/forget/test), the seconds it took (training, or forgetting for a method) and
    what else is known of it (``extra``: a method's settings, SISA's retrained shards...)."""

    name: str
    family: str
    seed: int
    probas: dict[str, np.ndarray]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


MAX_RUNS = 10_000
"""Most seeds, draws, shadows or FQ models a comparison takes: each is at least one training
or scoring, so more is a typo, and lists of them are built before anything runs."""
MAX_FQ_DELTA = 0.05
"""Largest --fq-delta: the challenge's scoring code used 0.01; above about 0.05 the chance level
of F moves erratically (0.51 at 0.1, 0.93 at 0.3, 0.28 at 0.5 with 16 models)."""


def check_options(methods: Sequence[str], method_params: dict[str, dict], *, seeds: int = 1,
                  draws: int = DEFAULT_DRAWS, shadows: int = 0, workdir: Optional[str | Path] = None,
                  base_seed: int = 0, sisa: bool = True, fq_models: int = 0, fq_delta: float = FQ_DELTA) -> None:
    """Everything about a comparison that can be checked without its data, before anything
    trains: method names, their settings' names and values, counts, the workdir."""
    from sisa.research.baselines import METHODS, method_settings

    for name in methods:
        METHODS.get(name)
    twice = sorted({name for name in methods if list(methods).count(name) > 1})
    if twice:
        raise SisaError(f"--methods names {', '.join(twice)} more than once; name each method once")
    for name, params in method_params.items():
        if name not in METHODS:
            raise SisaError(f"--set names unknown unlearning method {name!r}; choose one of: {', '.join(METHODS)}")
        if name not in methods:
            raise SisaError(f"settings given for method {name!r}, which is not being run")
        method_settings(name, params)
    for flag, value, least in (("--seeds", seeds, 1), ("--draws", draws, 1), ("--shadows", shadows, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= MAX_RUNS:
            raise SisaError(f"{flag} must be a whole number from {least} to {MAX_RUNS}, got {str(value)[:40]}")
    if isinstance(fq_models, bool) or not isinstance(fq_models, int) or fq_models < 0 or fq_models == 1 \
            or fq_models > MAX_RUNS:
        raise SisaError(f"--fq-models must be 0 (off) or a whole number from 2 to {MAX_RUNS} (models per row), "
                        f"got {str(fq_models)[:40]}")
    if isinstance(fq_delta, bool) or not isinstance(fq_delta, (int, float)) or not 0 <= fq_delta <= MAX_FQ_DELTA:
        raise SisaError(f"--fq-delta must be a number with 0 <= delta <= {MAX_FQ_DELTA}, got {fq_delta}: at larger "
                        f"deltas attacks whose rates leave 1 - delta - rate below 0 count as complete separation, "
                        f"and F of two sets that differ by chance only stops meaning anything")
    if base_seed + max(seeds, fq_models) - 1 >= 2**63:
        flag = f"--seeds {seeds}" if seeds >= fq_models else f"--fq-models {fq_models}"
        raise SisaError(f"{flag} from --seed {base_seed} goes past the largest seed, 2^63 - 1")
    if workdir is not None and sisa:
        root = Path(workdir)
        if root.exists() and not root.is_dir():
            raise SisaError(f"--workdir {root} is not a folder")
        for path in workspace_paths(root, [base_seed + k for k in range(seeds)]).values():
            if path.exists() or path.is_symlink():
                raise SisaError(f"--workdir {root}: {path} exists already (a previous comparison?); remove it "
                                f"or choose another --workdir")


def workspace_paths(root: Path, seeds: Sequence[int]) -> dict[tuple[int, str], Path]:
    """Where the SISA workspaces of each seed go under ``--workdir``: ``seed-N/sisa-deleted``
    (trained on every row, then ``sisa delete``) and ``seed-N/sisa-retrained``."""
    return {(s, kind): root / f"seed-{s}" / f"sisa-{kind}" for s in seeds for kind in ("deleted", "retrained")}


def compare(dataset: Dataset, settings: Settings, forget: str, *,
            methods: Sequence[str] = DEFAULT_METHODS, method_params: Optional[dict[str, dict]] = None,
            sisa: bool = True, shadows: int = 0, seeds: int = 1, draws: int = DEFAULT_DRAWS,
            workdir: Optional[str | Path] = None, forget_ids: Optional[Sequence[str]] = None,
            fq_models: int = 0, fq_delta: float = FQ_DELTA, info: Info = lambda message: None) -> dict[str, Any]:
    """Train the original, retrained and SISA models for each of ``seeds`` training seeds
    (``settings.seed``, ``settings.seed + 1``, ...), run ``methods``, score them all.

    ``settings`` are used for every model (shards and slices for SISA only). The forget set is
    drawn once, with ``settings.seed``: the seeds vary training, not the request. With
    ``workdir`` the SISA workspaces are kept under it (:func:`workspace_paths`), else they go
    to a temporary folder that is removed. Returns ``{"rows": [...], ...}``: each row has a
    method's mean scores, their ``sd`` and ``n`` (:func:`aggregate`), ``gap_own_ref`` and
    ``gap_mono_retrain``, seconds and speedup; see :func:`format_table`.

    With ``fq_models`` N >= 2, everything is trained for N seeds (at least; the first ``seeds``
    are the table's) and each row gets the challenge's ``forgetting_quality`` and ``fq_score``
    over its N models against its reference's N (:func:`forgetting_rows`), at ``fq_delta``.
    """
    method_params = method_params or {}
    seed_list = [settings.seed + k for k in range(seeds)]
    check_options(methods, method_params, seeds=seeds, draws=draws, shadows=shadows, workdir=workdir,
                  base_seed=settings.seed, sisa=sisa, fq_models=fq_models, fq_delta=fq_delta)
    if dataset.test is None or not len(dataset.test):
        raise SisaError("compare needs test rows (the attacks use them as non-members)")
    chosen = forget_set(dataset, forget, seed=settings.seed, ids=forget_ids)
    sets = make_sets(dataset, chosen)
    n = sets.n
    info(f"{dataset.spec}: {len(dataset.train)} training rows, forgetting {n['forget']} ({forget}); "
         f"{n['test']} test rows; model {settings.model}, {settings.epochs} epochs; "
         f"{seeds} seed(s) x {draws} draw(s)" + (f"; forgetting quality over {fq_models} models per row"
                                                  if fq_models else ""))
    if chosen.n_test_removed:
        info(f"{chosen.n_test_removed} of the ids are test rows: they leave the test rows (as 'sisa delete' "
             f"purges them), so no model is scored on them")
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="sisa-compare-", dir=workdir))
    kept = Path(workdir) if workdir is not None else scratch
    try:
        runs: list[ModelRun] = []
        exactness = []
        fq_runs: list[FQRun] = []
        fq_exact: list[bool] = []
        total = max(seeds, fq_models)
        for k in range(total):
            seed = settings.seed + k
            table = k < seeds
            say = info if total == 1 else (lambda message, k=k, table=table: info(
                f"[{'seed' if table else 'fq model'} {k + 1}/{total}] {message}"))
            # the forgetting quality's extra seeds keep their SISA workspaces only while they are scored
            root = kept if table else scratch
            seed_runs, exact = train_seed(dataset, dataclasses.replace(settings, seed=seed), sets, methods=methods,
                                          method_params=method_params, sisa=sisa, root=root, info=say)
            if k < fq_models:
                fq_runs += [fq_run(run, sets) for run in seed_runs]
                if exact is not None:
                    fq_exact.append(exact["identical_checkpoints"])
            if table:
                runs += seed_runs
                if exact is not None:
                    exactness.append(exact)
            else:
                shutil.rmtree(root / f"seed-{seed}", ignore_errors=True)
        lira_info = None
        lira_results: dict[tuple[str, int], dict[str, float]] = {}
        if shadows:
            kinds = [MONOLITHIC] + ([SISA] if sisa else [])
            started = time.perf_counter()
            trained = {kind: train_shadows(kind, dataset, settings, sets, count=shadows, root=scratch, info=info)
                       for kind in kinds}
            for run in runs:
                lira_results[run.name, run.seed] = lira_scores(run, trained[run.family], sets)
            lira_info = {"shadows": shadows, "kinds": kinds, "seconds": time.perf_counter() - started}
        info(f"scoring {len(runs)} models x {draws} draws")
        values = score_runs(runs, sets, draws=draws, lira_results=lira_results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = [_row(name, runs, values[name]) for name in dict.fromkeys(r.name for r in runs)]
    fq_info, fq_rows = None, {}
    if fq_models:
        info(f"forgetting quality: {fq_models} models per row against {fq_models} of its reference")
        fq_rows = forgetting_rows(fq_runs, delta=fq_delta)
        fq_info = forgetting_summary(fq_runs, fq_models, n["forget"], delta=fq_delta, sisa_identical=fq_exact)
    for row in rows:
        fq = fq_rows.get(row["method"])
        row["forgetting_quality"] = fq["F"] if fq else None
        row["fq_score"] = fq["score"] if fq else None
        if fq:
            row["fq"] = {k: v for k, v in fq.items() if k not in ("F", "score")}
    retrain = summary([r.seconds for r in runs if r.name == MONO_REFERENCE])
    warnings = small_sample_warnings(n["forget"], n["test"],
                                     metrics=[m for m in CHANCE_NAMES if m != "LiRA_auc" or shadows])
    result = {"data": dataset.spec, "forget": forget, "n_train": int(len(dataset.train)), "n_forget": n["forget"],
              "n_test": n["test"], "n_test_removed": chosen.n_test_removed, "settings": settings.to_dict(),
              "seeds": seed_list, "draws": draws, "retrain_seconds": retrain["mean"], "rows": rows,
              "references": dict(REFERENCE),
              "chance_sd": {m: chance_sd(m, n_forget=n["forget"], n_test=n["test"]) for m in CHANCE_NAMES},
              "warnings": warnings, "notes": _notes(rows, n) + _fq_notes(rows, fq_info),
              "forgetting_quality": fq_info,
              "sisa_exactness": _exactness_summary(exactness) if sisa else None, "lira": lira_info,
              "workspaces": ({f"seed-{s}/{kind}": str(p) for (s, kind), p in workspace_paths(kept, seed_list).items()}
                             if sisa and workdir is not None else None)}
    return result


def train_seed(dataset: Dataset, settings: Settings, sets: Sets, *, methods: Sequence[str],
               method_params: dict[str, dict], sisa: bool, root: Path,
               info: Info) -> tuple[list[ModelRun], Optional[dict[str, Any]]]:
    """Every model of one training seed (``settings.seed``): the monolithic original and
    retrained models, each method from the original, and with ``sisa`` the three SISA models
    (workspaces under ``root/seed-N``). Returns the runs and SISA's exactness check."""
    runs = _monolithic_runs(dataset, settings, sets, methods, method_params, info)
    if not sisa:
        return runs, None
    sisa_runs, exact = _sisa_runs(dataset, settings, sets, root, info)
    return runs + sisa_runs, exact


def _monolithic_runs(dataset: Dataset, settings: Settings, sets: Sets, methods: Sequence[str],
                     method_params: dict[str, dict], info: Info) -> list[ModelRun]:
    """The original and retrained models, then one run per approximate method."""
    import torch
    import torch._dynamo  # noqa: F401  - optimizers import it on first use; keep it out of the timings

    from sisa.research.baselines import ForgetTask, run_method
    from sisa.training.numerics import deterministic_torch

    data = sets.data
    order = _canonical(dataset, settings)
    X = dataset.train.X[order]
    labels = dataset.label_index(dataset.train.y[order], "training data")
    forget = sets.forget.mask[order]

    def run(name: str, model, seconds: float, **extra: Any) -> ModelRun:
        probas = {k: _probas(model, rows, settings, data) for k, rows in sets.X.items()}
        return ModelRun(name, MONOLITHIC, settings.seed, probas, seconds, extra)

    with deterministic_torch(settings):
        model, original_s, log = train_model(settings, data, X, labels,
                                             amnesiac_rows=forget if "amnesiac" in methods else None)
        info(f"original: trained on all rows in {original_s:.1f} s")
        retrained, retrain_s, _ = train_model(settings, data, X[~forget], labels[~forget])
        info(f"retrained: trained on the retain rows in {retrain_s:.1f} s (the monolithic reference)")
        runs = [run("original", model, original_s), run(MONO_REFERENCE, retrained, retrain_s)]
        tensors = {k: torch.from_numpy(np.array(v, copy=True)).to(settings.device)
                   for k, v in (("retain_X", X[~forget]), ("forget_X", X[forget]))}
        targets = {k: torch.from_numpy(v).to(settings.device)
                   for k, v in (("retain_y", labels[~forget]), ("forget_y", labels[forget]))}
        for name in methods:
            task = ForgetTask(copy.deepcopy(model), tensors["retain_X"], targets["retain_y"], tensors["forget_X"],
                              targets["forget_y"], data, settings, amnesiac_log=log)
            done = run_method(name, task, **method_params.get(name, {}))
            runs.append(run(name, task.model, done["seconds"], params=done["params"]))
            fa = accuracies(runs[-1].probas, sets.y)["FA"] if not diverged(runs[-1].probas) else float("nan")
            info(f"{name}: {done['seconds']:.1f} s, FA {fa:.3f}")
    return runs


def _sisa_runs(dataset: Dataset, settings: Settings, sets: Sets, root: Path,
               info: Info) -> tuple[list[ModelRun], dict[str, Any]]:
    """Train SISA on every row (scored: sisa-original), delete the forget rows (timed: the
    sisa-delete row), then train SISA without them (sisa-retrained) and check the two are the
    same, checkpoint for checkpoint."""
    from sisa.ops.delete import delete
    from sisa.ops.ensemble import Ensemble
    from sisa.ops.train import train_workspace
    from sisa.training.executors import make_executor
    from sisa.workspace.files import Workspace

    executor = make_executor("local")
    paths = workspace_paths(root, [settings.seed])
    full, without = Workspace(paths[settings.seed, "deleted"]), Workspace(paths[settings.seed, "retrained"])
    full.root.parent.mkdir(parents=True, exist_ok=True)

    def probas(workspace) -> dict[str, np.ndarray]:
        ensemble = Ensemble(workspace)
        return {k: ensemble.predict_proba(X) for k, X in sets.X.items()}

    trained = train_workspace(full.root, dataset, settings, executor=executor)
    info(f"sisa: trained {settings.shards} shards x {settings.slices} slices in {trained['seconds']:.1f} s")
    before = ModelRun("sisa-original", SISA, settings.seed, probas(full), trained["seconds"])
    chosen = sets.forget
    ids = dataset.train.ids[chosen.mask].tolist() + dataset.test.ids[chosen.test_mask].tolist()
    started = time.perf_counter()
    done = delete(full, ids, executor=executor)
    delete_s = time.perf_counter() - started
    shards = [{"shard": r["shard"], "from_slice": r["from_slice"]} for r in done["retrained"]]
    info("sisa delete: retrained " + ", ".join(f"shard {r['shard']} from slice {r['from_slice']}" for r in shards)
         + f" in {delete_s:.1f} s")
    after = ModelRun("sisa-delete", SISA, settings.seed, probas(full), delete_s,
                     {"retrained_shards": shards, "deleted_from_test": len(done["deleted_from_test"])})
    reduced = dataclasses.replace(dataset, train=dataset.train.take(~chosen.mask),
                                  test=dataset.test.take(~chosen.test_mask))
    again = train_workspace(without.root, reduced, settings, executor=executor)
    reference = ModelRun("sisa-retrained", SISA, settings.seed, probas(without), again["seconds"])
    exact = checkpoint_identity(full, without)
    exact["max_proba_difference"] = float(max(np.abs(after.probas[k] - reference.probas[k]).max() for k in sets.X))
    exact["seed"] = settings.seed
    after.extra["identical"] = exact["identical_checkpoints"]
    info(f"sisa trained without the forget rows: {exact['checkpoints']} checkpoints "
         f"{'identical' if exact['identical_checkpoints'] else 'DIFFERENT'} (sha256 digest "
         f"{exact['deleted_digest'][:12]} vs {exact['retrained_digest'][:12]}), largest probability difference "
         f"{exact['max_proba_difference']:.3g}")
    return [before, after, reference], exact


def checkpoint_identity(deleted, retrained) -> dict[str, Any]:
    """Whether two workspaces hold the same checkpoints: the same (shard, slice, file sha256,
    sha256 of the ids trained on) for every checkpoint; with a digest of each list."""
    def keys(workspace) -> list[str]:
        return sorted(f"{r.shard}:{r.slice}:{r.sha256}:{r.ids_sha256}" for r in workspace.checkpoints().checkpoints)

    a, b = keys(deleted), keys(retrained)

    def digest(items: list[str]) -> str:
        return hashlib.sha256("\n".join(items).encode()).hexdigest()

    return {"identical_checkpoints": a == b, "checkpoints": len(b), "deleted_digest": digest(a),
            "retrained_digest": digest(b)}


def _exactness_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    return {"identical_checkpoints": all(e["identical_checkpoints"] for e in per_seed),
            "identical_seeds": sum(e["identical_checkpoints"] for e in per_seed), "seeds": len(per_seed),
            "checkpoints": per_seed[0]["checkpoints"],
            "max_proba_difference": max(e["max_proba_difference"] for e in per_seed), "per_seed": per_seed}


# -- LiRA

@dataclass(frozen=True)
class Shadows:
    """Shadow models of one shape: ``stats`` (models, candidates) logit-scaled confidence on
    the candidate rows (forget then test rows, as :func:`_candidates`), ``inside`` whether each
    model trained on each candidate."""

    kind: str
    stats: np.ndarray
    inside: np.ndarray


def _candidates(sets: Sets) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """LiRA's candidate rows (forget, then test), their class indices, raw labels, and whether
    each is a member of the attacked models (forget rows: 1)."""
    X = np.concatenate([sets.X["forget"], sets.X["test"]])
    y = np.concatenate([sets.y["forget"], sets.y["test"]])
    raw = np.concatenate([sets.raw["forget"], sets.raw["test"]])
    members = np.concatenate([np.ones(len(sets.y["forget"])), np.zeros(len(sets.y["test"]))])
    return X, y, raw, members


def train_shadows(kind: str, dataset: Dataset, settings: Settings, sets: Sets, *, count: int, root: Path,
                  info: Info) -> Shadows:
    """``count`` shadow models shaped like the models they attack (``kind``: one monolithic
    model, or a SISA ensemble with ``settings``' shards and slices), each trained on the retain
    rows plus a random half of the candidates, with a seed of its own."""
    from sisa.training.executors import make_executor

    X, y, raw, _ = _candidates(sets)
    executor = make_executor("local")
    stats, inside = [], []
    for k in range(count):
        seed = derive_seed(settings.seed, "shadow", k) % 2**31
        take = np.random.default_rng(seed).random(len(y)) < 0.5
        shadow_settings = dataclasses.replace(settings, seed=seed)
        rows_X = np.concatenate([sets.X["retain"], X[take]])
        if kind == MONOLITHIC:
            model, _, _ = train_model(shadow_settings, sets.data, rows_X, np.concatenate([sets.y["retain"], y[take]]))
            probas = _probas(model, X, settings, sets.data)
        else:
            probas = _sisa_shadow(dataset, shadow_settings, rows_X, np.concatenate([sets.raw["retain"], raw[take]]),
                                  X, root / f"shadow-{k}", executor)
        stats.append(logit_confidence(probas, y))
        inside.append(take)
        info(f"LiRA shadow model {k + 1}/{count} ({kind}) trained")
    return Shadows(kind, np.stack(stats), np.stack(inside))


def _sisa_shadow(dataset: Dataset, settings: Settings, X: np.ndarray, raw_y: np.ndarray, candidates: np.ndarray,
                 folder: Path, executor) -> np.ndarray:
    """A SISA ensemble trained on ``X`` (ids of its own: the shadow's partition is its own, as
    a retraining's would be) in ``folder``; its class probabilities on ``candidates``."""
    from sisa.ops.ensemble import Ensemble
    from sisa.ops.train import train_workspace
    from sisa.workspace.files import Workspace

    rows = Table(np.arange(len(X), dtype=np.int64), X, raw_y)
    shadow = dataclasses.replace(dataset, spec=f"{dataset.spec} (LiRA shadow)", train=rows, test=None)
    try:
        train_workspace(folder, shadow, settings, executor=executor)
        return Ensemble(Workspace(folder)).predict_proba(candidates)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def lira_scores(run: ModelRun, shadows: Shadows, sets: Sets) -> dict[str, float]:
    """LiRA's AUC and TPR at 1% FPR against ``run``'s model, forget rows as members."""
    if diverged(run.probas):
        return {"LiRA_auc": float("nan"), "LiRA_tpr_at_1pct_fpr": float("nan")}
    _, y, _, members = _candidates(sets)
    target = logit_confidence(np.concatenate([run.probas["forget"], run.probas["test"]]), y)
    attack = lira(target, shadows.stats, shadows.inside, members)
    return {"LiRA_auc": attack["auc"], "LiRA_tpr_at_1pct_fpr": attack["tpr_at_1pct_fpr"]}


# -- the challenge's forgetting quality

@dataclass(frozen=True)
class FQRun:
    """What the forgetting quality keeps of one model (:class:`ModelRun`): the logit-scaled
    confidence on each forget row (``forget``; None when the model diverged) and its RA and TA.
    A few numbers per forget row, so that many seeds' models fit in memory."""

    name: str
    family: str
    seed: int
    forget: Optional[np.ndarray]
    RA: float
    TA: float


def fq_run(run: ModelRun, sets: Sets) -> FQRun:
    """The part of ``run`` the forgetting quality needs."""
    if diverged(run.probas):
        return FQRun(run.name, run.family, run.seed, None, float("nan"), float("nan"))
    acc = accuracies(run.probas, sets.y)
    return FQRun(run.name, run.family, run.seed, logit_confidence(run.probas["forget"], sets.y["forget"]),
                 acc["RA"], acc["TA"])


def forgetting_rows(runs: Sequence[FQRun], *, delta: float = FQ_DELTA) -> dict[str, dict[str, Any]]:
    """The challenge's score (:func:`~sisa.research.evaluation.challenge_score`) of every model
    that is not a reference: its models, one per seed, against its own reference's
    (:data:`REFERENCE`), as the challenge ran many unlearnings (here each from an original of
    its own seed) against many retrainings. The monolithic rows face the retrained models,
    sisa-original and sisa-delete face sisa-retrained. A diverged model is left out and counted
    (``diverged``); with fewer than two models left on a side, F and the score are NaN."""
    by: dict[str, list[FQRun]] = {}
    for run in runs:
        by.setdefault(run.name, []).append(run)
    out: dict[str, dict[str, Any]] = {}
    for name, mine in by.items():
        ref = REFERENCE[mine[0].family]
        if name == ref or ref not in by:
            continue
        usable = [r for r in mine if r.forget is not None]
        refs = [r for r in by[ref] if r.forget is not None]
        counts = {"reference": ref, "diverged": len(mine) - len(usable)}
        if len(usable) < 2 or len(refs) < 2:
            out[name] = {"F": float("nan"), "score": float("nan"), "models": len(usable),
                         "reference_models": len(refs), **counts}
            continue
        score = challenge_score(np.stack([r.forget for r in usable]), np.stack([r.forget for r in refs]),
                                ra=[r.RA for r in usable], ra_ref=[r.RA for r in refs],
                                ta=[r.TA for r in usable], ta_ref=[r.TA for r in refs], delta=delta)
        out[name] = {**score, **counts}
    return out


def forgetting_summary(runs: Sequence[FQRun], models: int, n_forget: int, *, delta: float = FQ_DELTA,
                       sisa_identical: Sequence[bool] = ()) -> dict[str, Any]:
    """What the forgetting quality's numbers can show: the seeds, delta, the largest finite
    epsilon ``models`` models a side can show, F under the null (two sets of models that differ
    by chance only; ``null_sd``: its sd over ``n_forget`` rows taken as independent, a lower
    bound), and in how many seeds SISA after deletion equalled SISA retrained."""
    null = null_forgetting_quality(models, delta=delta)
    return {"models": models, "seeds": sorted({r.seed for r in runs}), "delta": delta, "bin_width": FQ_BIN_WIDTH,
            "max_finite_epsilon": max_finite_epsilon(models, delta=delta), "null": null["mean"],
            "null_sd": null["sd"] / np.sqrt(n_forget) if n_forget else float("nan"),
            "sisa_identical_seeds": sum(sisa_identical) if sisa_identical else None,
            "sisa_identical_checkpoints": all(sisa_identical) if sisa_identical else None}


NULL_SD_FACTOR = 3.0
"""How much wider than ``null_sd`` (rows taken as independent) the null F's spread is taken
to be: the rows are scored by the same N models, so they are not independent. Splitting 40
digits models retrained with different seeds 300 times into two sets of N gave sds 1.8-2.6x
the bound for N = 2 to 16 (2-core x86_64 machine, 2026-11-29)."""


def _fq_notes(rows: Sequence[dict[str, Any]], fq: Optional[dict[str, Any]]) -> list[str]:
    """A note when a model trained on the forget rows (original, sisa-original) gets an F
    within 2 null sds (``null_sd`` x :data:`NULL_SD_FACTOR`) of the null's, or above it: then N models do not tell a model that saw the
    rows from one that did not, and no method's F can show forgetting."""
    if not fq:
        return []
    out = []
    for row in rows:
        if row["method"] not in ("original", "sisa-original") or row.get("forgetting_quality") is None:
            continue
        F = row["forgetting_quality"]
        if np.isfinite(F) and F > fq["null"] - 2 * NULL_SD_FACTOR * fq["null_sd"]:
            out.append(f"{row['method']}: forgetting quality {F:.3f} against {fq['null']:.3f} for two sets of "
                       f"{fq['models']} models that differ by chance only: with {fq['models']} models the attack does "
                       f"not tell models trained on the forget rows from {row['reference']} ones, so the F of the "
                       f"rows judged against {row['reference']} cannot show forgetting")
    return out


# -- scores over seeds and draws

def draw_seed(seed: int, draw: int) -> int:
    """The attacks' random state for ``draw`` of training seed ``seed``."""
    return derive_seed(seed, "attack draw", draw) % 2**32


def score_runs(runs: Sequence[ModelRun], sets: Sets, *, draws: int,
               lira_results: Optional[dict[tuple[str, int], dict[str, float]]] = None) -> dict[str, dict[str, list]]:
    """Every score of every run: {method: {metric: [values]}}, one value per seed for
    :data:`SEED_METRICS`, one per seed and draw for :data:`DRAW_METRICS`. A model and its
    reference are scored with the same draws (paired); a diverged model gets NaNs."""
    lira_results = lira_results or {}
    values: dict[str, dict[str, list]] = {}
    for seed in dict.fromkeys(r.seed for r in runs):
        of_seed = {r.name: r for r in runs if r.seed == seed}
        acc = {name: (accuracies(r.probas, sets.y) if not diverged(r.probas) else dict.fromkeys(ACCURACY_METRICS,
                                                                                              float("nan")))
               for name, r in of_seed.items()}
        attacks = {name: [attack_scores(r.probas, sets.y, seed=draw_seed(seed, d)) if not diverged(r.probas)
                          else dict.fromkeys(ATTACK_METRICS, float("nan")) for d in range(draws)]
                   for name, r in of_seed.items()}
        for name, run in of_seed.items():
            own = REFERENCE[run.family]
            out = values.setdefault(name, {m: [] for m in SEED_METRICS + DRAW_METRICS})
            for metric in ACCURACY_METRICS:
                out[metric].append(acc[name][metric])
            for metric in ("LiRA_auc", "LiRA_tpr_at_1pct_fpr"):
                out[metric].append(lira_results.get((name, seed), {}).get(metric, float("nan")))
            out["seconds"].append(run.seconds)
            timed = name not in NOT_TIMED
            out["speedup"].append(of_seed[MONO_REFERENCE].seconds / run.seconds if timed else float("nan"))
            out["speedup_own_ref"].append(of_seed[own].seconds / run.seconds if timed else float("nan"))
            for d in range(draws):
                for metric in ATTACK_METRICS:
                    out[metric].append(attacks[name][d][metric])
                scored = {**acc[name], **attacks[name][d]}
                for key, ref in (("gap_own_ref", own), ("gap_mono_retrain", MONO_REFERENCE)):
                    out[key].append(average_gap(scored, {**acc[ref], **attacks[ref][d]}))
    return values


def aggregate(values: dict[str, Sequence[float]]) -> dict[str, Any]:
    """Row fields from one method's score lists: each metric's mean under its own name, and
    ``sd``, ``n`` and ``values`` dicts (:func:`sisa.research.evaluation.summary`).

    >>> row = aggregate({"MIA": [0.5, 0.7, 0.6], "TA": [0.9]})
    >>> row["MIA"], row["sd"]["MIA"], row["n"]["MIA"], row["TA"], row["sd"]["TA"]
    (0.6, 0.1, 3, 0.9, None)
    """
    row: dict[str, Any] = {"sd": {}, "n": {}, "values": {}}
    for metric, vals in values.items():
        stats = summary(vals)
        row[metric] = stats["mean"]
        row["sd"][metric] = stats["sd"]
        row["n"][metric] = stats["n"]
        row["values"][metric] = [float(v) for v in vals]
    return row


def _row(name: str, runs: Sequence[ModelRun], values: dict[str, list]) -> dict[str, Any]:
    mine = [r for r in runs if r.name == name]
    family = mine[0].family
    row = {"method": name, "family": family, "reference": REFERENCE[family], **aggregate(values)}
    for key in ("speedup", "speedup_own_ref", "LiRA_auc", "LiRA_tpr_at_1pct_fpr"):
        if row["n"][key] == 0:
            row[key] = None
    gone = [r.seed for r in mine if diverged(r.probas)]
    if gone:
        row["diverged"] = True
        row["diverged_seeds"] = gone
    if "params" in mine[0].extra:
        row["params"] = mine[0].extra["params"]
    if "retrained_shards" in mine[0].extra:
        row["retrained_shards"] = mine[0].extra["retrained_shards"]
    if "identical" in mine[0].extra:
        row["identical"] = all(r.extra["identical"] for r in mine)
        row["identical_seeds"] = f"{sum(r.extra['identical'] for r in mine)}/{len(mine)}"
    return row


def _notes(rows: Sequence[dict[str, Any]], n: dict[str, int]) -> list[str]:
    """What the reader should know to read the table: where a model trained on the forget rows
    (original, sisa-original) gets an MIA within two chance sds of its reference's, the attack
    cannot tell a model that saw the rows from one that did not, so an unlearned model's MIA
    near the reference's shows nothing by itself."""
    sd = chance_sd("MIA", n_forget=n["forget"], n_test=n["test"])
    by = {row["method"]: row for row in rows}
    out = []
    for name in ("original", "sisa-original"):
        row = by.get(name)
        ref = by.get(REFERENCE[row["family"]]) if row is not None else None
        if ref is None or not (np.isfinite(row["MIA"]) and np.isfinite(ref["MIA"])):
            continue
        if abs(row["MIA"] - ref["MIA"]) < 2 * sd:
            rest = ("sisa-delete's MIA shows nothing by itself; the evidence that SISA forgot is the checkpoint "
                    "identity" if row["family"] == SISA else "the MIA of the methods started from it cannot show "
                    "forgetting")
            out.append(f"{name}: MIA {row['MIA']:.3f} against {ref['MIA']:.3f} for {ref['method']}, a difference "
                       f"within 2 chance sd ({2 * sd:.3f}): the simple MIA does not tell this model, trained on the "
                       f"forget rows, from one that never saw them beyond chance, so {rest}")
    return out


# -- presentation

COLUMNS = (("method", "method", "{}"), ("RA", "RA", "{:.3f}"), ("FA", "FA", "{:.3f}"), ("TA", "TA", "{:.3f}"),
           ("MIA", "MIA acc", "{:.3f}"), ("MIA_null", "MIA null", "{:.3f}"), ("MIA_efficacy", "MIA-eff", "{:.3f}"),
           ("LiRA_auc", "LiRA AUC", "{:.3f}"), ("forgetting_quality", "FQ F", "{:.3f}"),
           ("fq_score", "FQ score", "{:.3f}"), ("gap_own_ref", "gap own ref", "{:.3f}"),
           ("gap_mono_retrain", "gap mono", "{:.3f}"), ("identical", "identical", "{}"),
           ("seconds", "seconds", "{:.2f}"), ("speedup", "speedup", "{:.1f}x"))
NO_SD = ("seconds", "speedup", "forgetting_quality", "fq_score")
"""Columns shown as means only (their sd is in the JSON), or one value over many models."""


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if key == "identical":
        return "-" if value is None else ("yes" if value else "NO") + f" {row['identical_seeds']}"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    text = fmt.format(value)
    sd = row.get("sd", {}).get(key)
    if key not in NO_SD and sd is not None and not np.isnan(sd):
        text += "±" + fmt.format(sd)
    return text


def format_table(result: dict[str, Any], markdown: bool = False) -> str:
    """The comparison as a text (or Markdown) table, one row per model: mean±sd of every
    score (sd over seeds, or seeds x draws for the attacks and gaps; see :func:`describe_n`)."""
    columns = [c for c in COLUMNS if any(row.get(c[0]) is not None for row in result["rows"])]
    cells = [[c[1] for c in columns]]
    for row in result["rows"]:
        cells.append([_cell(row, key, fmt) for key, _, fmt in columns])
        if row.get("diverged"):
            gone, total = len(row["diverged_seeds"]), len(result.get("seeds", [0]))
            cells[-1][0] += " (diverged)" if gone == total else f" (diverged {gone}/{total})"
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
                     for r in cells)


def describe_n(result: dict[str, Any]) -> str:
    """What the ± and the number of values are."""
    seeds, draws = len(result["seeds"]), result["draws"]
    per_seed = "seed" if seeds == 1 else "seeds"
    line = (f"mean±sd over {seeds} training {per_seed} (RA, FA, TA, LiRA, seconds) and {seeds} x {draws} "
            f"attack draws = {seeds * draws} values (MIA, MIA null, MIA-eff, gaps)")
    if seeds == 1:
        line += "; one seed: the ± shows the attacks' sampling only, not training randomness (--seeds)"
    return line


def footer(result: dict[str, Any]) -> list[str]:
    """The lines printed under the table: what the columns mean, chance, notes, warnings."""
    chance = result["chance_sd"]
    gaps = ("gap = mean |UA, MIA-eff, RA, TA - the reference's| over paired draws; own ref: retrained for the "
            "monolithic rows, sisa-retrained (SISA trained without the forget rows) for the sisa rows; mono: the "
            "monolithic retrained model")
    lines = [describe_n(result), gaps,
             f"MIA null: the same attack between two disjoint halves of the test rows (both unseen); chance alone, "
             f"on {result['n_forget']} forget and {result['n_test']} test rows, gives a sd of about "
             + ", ".join(f"{chance[m]:.3f} for {CHANCE_NAMES[m]}" for m in chance
                         if m != "LiRA_auc" or result.get("lira"))]
    exact = result.get("sisa_exactness")
    if exact is not None:
        digests = exact["per_seed"][0]
        lines.append(f"identical: after 'sisa delete', SISA's {exact['checkpoints']} checkpoints "
                     f"{'equal' if exact['identical_checkpoints'] else 'DIFFER from'} those of SISA trained without "
                     f"the forget rows ({exact['identical_seeds']} of {exact['seeds']} seeds; checkpoint sha256 digest "
                     f"{digests['deleted_digest'][:12]} vs {digests['retrained_digest'][:12]} for seed "
                     f"{digests['seed']}); largest probability difference {exact['max_proba_difference']:.3g}")
    if result.get("lira"):
        lines.append(f"LiRA: {result['lira']['shadows']} shadow models of each shape "
                     f"({', '.join(result['lira']['kinds'])}), trained once and shared by the seeds")
    lines.append(f"speedup = monolithic retraining seconds ({result['retrain_seconds']:.2f} s) / method seconds")
    lines += fq_footer(result)
    lines += [f"note: {n}" for n in result["notes"]]
    lines += [f"warning: {w}" for w in result["warnings"]]
    return lines


def fq_footer(result: dict[str, Any]) -> list[str]:
    """The lines that say what the forgetting quality columns are and what they can show."""
    fq = result.get("forgetting_quality")
    if not fq:
        return []
    n, eps = fq["models"], fq["max_finite_epsilon"]
    lowest = 2.0 ** -min(int(np.floor(eps / fq["bin_width"])), 12)
    seeds = fq["seeds"]
    lines = [f"FQ F: forgetting quality of the NeurIPS 2023 unlearning challenge over {n} models per row (seeds "
             f"{seeds[0]}-{seeds[-1]}) against {n} of its reference: per forget row, epsilon of the best threshold "
             f"attack on log p_y - log sum_(j!=y) p_j at delta {fq['delta']:g}, scored 2^-floor(epsilon / "
             f"{fq['bin_width']:g}) (at least 2^-12), averaged; FQ score = F x RA ratio x TA ratio",
             f"FQ with {n} models: the largest finite epsilon is {eps:.2f} (score {lowest:g}; non-overlapping "
             f"values count as epsilon = inf, score 2^-12); two sets of {n} models that differ by chance only get "
             f"F = {fq['null']:.3f} (sd at least {fq['null_sd']:.3f} on these rows, taken as independent; as the rows "
             f"share the models, about {NULL_SD_FACTOR:g}x that, {NULL_SD_FACTOR * fq['null_sd']:.3f}, is used for "
             f"the notes): compare F with that, not with 1"]
    if fq.get("sisa_identical_seeds") is not None:
        lines.append(f"FQ of sisa-delete: 1 exactly when its ensembles are those of sisa-retrained (identical "
                     f"checkpoints in {fq['sisa_identical_seeds']} of {n} seeds), because they are the same models, "
                     f"not two samples of one distribution")
    gone = [f"{row['method']} {row['fq']['diverged']}/{n}" for row in result["rows"]
            if row.get("fq", {}).get("diverged")]
    if gone:
        lines.append("FQ leaves diverged models out: " + ", ".join(gone))
    return lines


def write_chart(result: dict[str, Any], path: Path) -> bool:
    """A PNG with one line per model (names on the axis, so no label overlaps another): the
    gaps to the own reference and to the monolithic retrained model, MIA accuracy beside its
    null, and the speedup. Needs matplotlib (``pip install 'sisa[plots]'``); returns False
    without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    names = [r["method"] for r in rows]
    y = np.arange(len(rows))[::-1].astype(float)

    def get(row: dict[str, Any], key: str) -> tuple[float, float]:
        value = row.get(key)
        sd = row.get("sd", {}).get(key)
        ok = value is not None and np.isfinite(value)
        return (value if ok else np.nan), (sd if ok and sd is not None else 0.0)

    fig, axes = plt.subplots(1, 3, figsize=(13, 1.6 + 0.32 * len(rows)), sharey=True)
    gaps, mia, speed = axes
    for key, marker, offset, label in (("gap_own_ref", "o", 0.12, "gap to its own reference"),
                                       ("gap_mono_retrain", "s", -0.12, "gap to the monolithic retrained")):
        pts = [get(r, key) for r in rows]
        gaps.errorbar([p[0] for p in pts], y + offset, xerr=[p[1] for p in pts], fmt=marker, ms=5, capsize=2,
                      label=label, mfc="white" if marker == "s" else None)
    gaps.set_xlabel("average gap (0 = the reference)")
    gaps.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    for key, colour, offset, label in (("MIA", "tab:red", 0.12, "MIA accuracy"),
                                       ("MIA_null", "tab:gray", -0.12, "MIA null (test vs test)")):
        pts = [get(r, key) for r in rows]
        mia.errorbar([p[0] for p in pts], y + offset, xerr=[p[1] for p in pts], fmt="o", ms=5, capsize=2,
                     color=colour, label=label)
    mia.axvline(0.5, color="black", lw=0.6, ls=":")
    mia.set_xlabel("simple MIA accuracy (0.5 = chance)")
    mia.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    pts = [get(r, "speedup") for r in rows]
    for family, colour in ((MONOLITHIC, "tab:blue"), (SISA, "tab:red")):
        mine = [i for i, r in enumerate(rows) if r["family"] == family and np.isfinite(pts[i][0])]
        if mine:
            speed.errorbar([pts[i][0] for i in mine], y[mine], xerr=[pts[i][1] for i in mine], fmt="D", ms=5,
                           capsize=2, color=colour, label=family)
    speed.set_xscale("log")
    speed.axvline(1, color="black", lw=0.6, ls=":")
    speed.set_xlabel("speedup over monolithic retraining (log; 1 = as slow)")
    if speed.get_legend_handles_labels()[0]:
        speed.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    gaps.set_yticks(y, names, fontsize=8)
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    seeds = len(result["seeds"])
    fig.suptitle(f"{result['data']}, forget {result['forget']} ({result['n_forget']} rows), "
                 f"{result['settings']['model']}; mean ± sd over {seeds} seed(s) x {result['draws']} draws",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
