"""``sisa compare``: exact deletion against approximate unlearning methods, in one table."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sisa.cli._common import (
    add_data_args,
    add_settings_args,
    check_can_write,
    dataset_and_settings,
    emit,
    info,
)
from sisa.cli.base import Environment, Subcommand
from sisa.errors import SisaError

DEFAULT_DRAWS = 20
"""--draws' default (the command line imports no numpy: sisa.research.compare's is this one)."""
DEFAULT_FQ_DELTA = 1e-5
"""--fq-delta's default (sisa.research.evaluation.FQ_DELTA, for the same reason)."""


def parse_method_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """``METHOD.NAME=VALUE`` strings into {method: {name: value}}; values are numbers.

    >>> parse_method_settings(["ft.lr=0.05", "ssd.alpha=5"])
    {'ft': {'lr': 0.05}, 'ssd': {'alpha': 5.0}}
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        match = re.fullmatch(r"([\w+-]+)\.(\w+)=(.+)", item)
        if not match:
            raise SisaError(f"--set {item!r}: expected METHOD.SETTING=VALUE, e.g. ft.lr=0.05")
        method, name, text = match.groups()
        try:
            value = float(text)
        except ValueError:
            raise SisaError(f"--set {item!r}: {text!r} is not a number") from None
        out.setdefault(method, {})[name] = value
    return out


def run_record(argv: list[str]) -> dict[str, Any]:
    """When, where and how the results were made (every published figure states them)."""
    import os
    import platform
    import shlex
    from datetime import datetime, timezone

    import torch

    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": "sisa " + shlex.join(argv),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}


def markdown_header(result: dict[str, Any]) -> str:
    """One line saying what was compared, where, when and with which command."""
    machine = result["machine"]
    settings = result["settings"]
    exact = result.get("sisa_exactness")
    seeds = result.get("seeds", [settings["seed"]])
    fq = result.get("forgetting_quality")
    fq_models = f"; forgetting quality over {fq['models']} models per row" if fq else ""
    line = (f"{result['data']}, forget {result['forget']} ({result['n_forget']} of {result['n_train']} training rows), "
            f"{settings['model']}, {settings['epochs']} epochs; SISA {settings['shards']} shards x "
            f"{settings['slices']} slices; {len(seeds)} training seed(s) x {result.get('draws', 1)} attack draws"
            f"{fq_models}. "
            f"{machine['cpus']} CPUs ({machine['cpu_capability']}), torch {machine['torch']}"
            f"{', ' + machine['gpu'] if machine.get('gpu') else ''}; {result['date']}; `{result['command']}`.")
    if exact is not None:
        line += (f" After `sisa delete`, SISA's {exact['checkpoints']} checkpoints were "
                 f"{'identical to' if exact['identical_checkpoints'] else 'DIFFERENT from'} SISA trained without "
                 f"the forget rows ({exact['identical_seeds']} of {exact['seeds']} seeds).")
    return line


def _finite(value: Any) -> Any:
    """NaN (a diverged model's scores) becomes null, so the JSON stays standard."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


class Compare(Subcommand):
    name = "compare"
    help = "compare exact deletion with approximate unlearning methods"
    description = ("Train the original model on all rows and the model retrained without the forget set "
                   "(the monolithic reference); run each approximate unlearning method from the original; "
                   "train SISA on all rows, 'sisa delete' the forget set and train SISA without it (SISA's "
                   "reference, which the deleted SISA must equal checkpoint for checkpoint). Print, as mean±sd "
                   "over training seeds and attack draws, retain/forget/test accuracy, membership-inference "
                   "scores beside their null, the average gap to each model's own reference and to the "
                   "monolithic retrained model, seconds and speedup; with --fq-models, the forgetting quality "
                   "of the NeurIPS 2023 unlearning challenge over many models per row.")
    path_args = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_data_args(p)
        p.add_argument("--forget", default="random:0.1", metavar="SPEC",
                       help="random:F (a share, or a count, of the training rows; default random:0.1), "
                            "class:C (every row of class C) or ids:PATH (the ids 'sisa delete --ids-file' "
                            "takes: one per line, or a CSV/Parquet id column; test ids leave the test rows)")
        p.add_argument("--methods", metavar="M,M,...",
                       help="approximate methods to run, or 'none' (default: all of --list-methods)")
        p.add_argument("--set", action="append", default=[], metavar="METHOD.SETTING=VALUE",
                       help="change a method's setting, e.g. --set ft.lr=0.05 --set ssd.alpha=5 "
                            "(repeatable; 'sisa compare --list-methods' shows them)")
        p.add_argument("--list-methods", action="store_true", help="list the methods and their settings")
        p.add_argument("--no-sisa", action="store_true", help="skip the SISA rows")
        p.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="training seeds: everything is trained N times, with --seed, --seed + 1, ...; "
                            "the forget set stays the one --seed draws (default 1)")
        p.add_argument("--draws", type=int, default=DEFAULT_DRAWS, metavar="N",
                       help=f"random draws of the attacks' subsamples and splits per model (cheap; default "
                            f"{DEFAULT_DRAWS})")
        p.add_argument("--shadows", type=int, metavar="N",
                       help="shadow models of each shape (monolithic, and SISA for the SISA rows) for the "
                            "LiRA-style attack (default: 8 for up to 5,000 training rows, else 0; each costs "
                            "one full training, trained once for all seeds)")
        p.add_argument("--fq-models", type=int, default=0, metavar="N",
                       help="the unlearning challenge's forgetting quality: train everything (and run every "
                            "method) with N seeds, --seed to --seed + N - 1, and score each row's N models "
                            "against N of its reference (0: off, the default; N >= 2; costs N times the "
                            "trainings of one seed, the first --seeds of them shared with the table)")
        p.add_argument("--fq-delta", type=float, default=DEFAULT_FQ_DELTA, metavar="DELTA",
                       help=f"the delta at which the forgetting quality estimates epsilon (default "
                            f"{DEFAULT_FQ_DELTA:g})")
        p.add_argument("--workdir", metavar="DIR",
                       help="keep the SISA workspaces under DIR (seed-N/sisa-deleted, seed-N/sisa-retrained; "
                            "refused if they exist) and put temporary ones there (default: a temporary "
                            "folder, removed)")
        p.add_argument("--out", default="compare", metavar="DIR",
                       help="folder for the results (JSON, Markdown table, PNG chart; default ./compare)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        add_settings_args(p)
        p.set_defaults(no_wait=False)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.research.compare import check_options, compare, footer, format_table

        if args.list_methods:
            return _list_methods(args)
        # everything the data is not needed for is checked first, and all of it before training
        methods = _chosen_methods(args.methods)
        params = parse_method_settings(args.set)
        out = Path(args.out)
        _check_writable(out)
        shadows = args.shadows if args.shadows is not None else 0
        check_options(methods, params, seeds=args.seeds, draws=args.draws, shadows=shadows, workdir=args.workdir,
                      base_seed=args.seed or 0, sisa=not args.no_sisa, fq_models=args.fq_models,
                      fq_delta=args.fq_delta)
        dataset, settings = dataset_and_settings(args)
        if args.shadows is None:
            shadows = 8 if len(dataset.train) <= 5000 else 0
        forget_ids = _forget_ids(args.forget, args.id_col)
        result = compare(dataset, settings, args.forget, methods=methods, method_params=params,
                         sisa=not args.no_sisa, shadows=shadows, seeds=args.seeds, draws=args.draws,
                         workdir=args.workdir, forget_ids=forget_ids, fq_models=args.fq_models,
                         fq_delta=args.fq_delta, info=info)
        result = _finite(result)
        result.update(run_record(args.argv))
        stem = re.sub(r"[^\w.-]+", "-", f"{Path(dataset.spec).name}-{args.forget}").strip("-")
        charted = _write_results(result, out, stem)
        lines = [format_table(result), *footer(result)]
        if result.get("workspaces"):
            lines.append(f"SISA workspaces kept under {args.workdir} (seed-N/sisa-deleted, seed-N/sisa-retrained)")
        lines.append(f"results: {out / stem}.json, .md" + (", .png" if charted else ""))
        emit(args, result, "\n".join(lines))
        exact = result["sisa_exactness"]
        fq_exact = (result["forgetting_quality"] or {}).get("sisa_identical_checkpoints")
        return 1 if (exact is not None and not exact["identical_checkpoints"]) or fq_exact is False else 0


def _forget_ids(spec: str, id_col: str) -> list[str] | None:
    """The ids of ``--forget ids:PATH``, read as 'sisa delete --ids-file PATH' reads them (one
    per line, or the id column of a .csv/.parquet file); None for the other kinds."""
    from sisa.cli.delete import read_ids

    kind, _, path = spec.partition(":")
    if kind != "ids":
        return None
    try:
        return read_ids(argparse.Namespace(ids=None, ids_file=[path]), id_col)
    except SisaError as exc:
        raise SisaError(str(exc).replace(f"--ids-file {path}", f"--forget ids:{path}")) from None


def _list_methods(args: argparse.Namespace) -> int:
    from sisa.research.baselines import METHODS

    lines = []
    for name in METHODS:
        method = METHODS.get(name)
        settings = ", ".join(f"{k}={v}" for k, v in method.defaults.items()) or "no settings"
        lines.append(f"{name:10s} {method.summary} ({settings})")
    emit(args, {name: METHODS.get(name).defaults for name in METHODS}, "\n".join(lines))
    return 0


def _chosen_methods(text: str | None) -> list[str]:
    """The methods ``--methods`` names (each one checked), all by default, none for 'none'."""
    from sisa.research.baselines import METHODS
    from sisa.research.compare import DEFAULT_METHODS

    if text is None:
        methods = list(DEFAULT_METHODS)
    elif text.strip() == "none":
        methods = []
    else:
        methods = [m.strip() for m in text.split(",") if m.strip()]
    for name in methods:
        METHODS.get(name)
    return methods


def _check_writable(out: Path) -> None:
    """Refuse an --out that cannot take the results before anything trains (they come last)."""
    if out.exists() and not out.is_dir():
        raise SisaError(f"--out {out} is not a folder")
    check_can_write(out, "--out", "cannot be written")


def _write_results(result: dict[str, Any], out: Path, stem: str) -> bool:
    """Write ``out/stem``.json, .md and (with matplotlib) .png; returns whether the chart was
    written (a chart of an earlier run with the same name is removed when it cannot be)."""
    from sisa.research.compare import footer, format_table, write_chart

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown_header(result) + "\n\n" + format_table(result, markdown=True) + "\n\n"
                                    + "\n".join(f"- {line}" for line in footer(result)) + "\n")
    chart = out / f"{stem}.png"
    if write_chart(result, chart):
        return True
    chart.unlink(missing_ok=True)  # an earlier run's chart would pass for this one's
    info("matplotlib is not installed: no chart (pip install 'sisa[plots]')")
    return False
