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
    dataset_and_settings,
    emit,
    info,
)
from sisa.cli.base import Environment, Subcommand
from sisa.errors import SisaError


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
    line = (f"{result['data']}, forget {result['forget']} ({result['n_forget']} of {result['n_train']} training rows), "
            f"{settings['model']}, {settings['epochs']} epochs; SISA {settings['shards']} shards x {settings['slices']} "
            f"slices. {machine['cpus']} CPUs ({machine['cpu_capability']}), torch {machine['torch']}"
            f"{', ' + machine['gpu'] if machine.get('gpu') else ''}; {result['date']}; `{result['command']}`.")
    if exact is not None:
        line += (f" After `sisa delete`, SISA's {exact['checkpoints']} checkpoints were "
                 f"{'identical to' if exact['identical_checkpoints'] else 'DIFFERENT from'} SISA trained without "
                 f"the forget rows.")
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
    description = ("Train the original model on all rows, the model retrained without the forget set "
                   "(the gold standard), and SISA then 'sisa delete' of the forget set; run each "
                   "approximate unlearning method from the original; print retain/forget/test accuracy, "
                   "membership-inference scores, the average gap to the retrained model, seconds and "
                   "speedup over retraining.")
    path_args = ()

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        add_data_args(p)
        p.add_argument("--forget", default="random:0.1", metavar="SPEC",
                       help="random:F (a share, or a count, of the training rows; default random:0.1), "
                            "class:C (every row of class C) or ids:PATH (one id per line)")
        p.add_argument("--methods", metavar="M,M,...",
                       help="approximate methods to run, or 'none' (default: all of --list-methods)")
        p.add_argument("--set", action="append", default=[], metavar="METHOD.SETTING=VALUE",
                       help="change a method's setting, e.g. --set ft.lr=0.05 --set ssd.alpha=5 "
                            "(repeatable; 'sisa compare --list-methods' shows them)")
        p.add_argument("--list-methods", action="store_true", help="list the methods and their settings")
        p.add_argument("--no-sisa", action="store_true", help="skip the SISA train-then-delete row")
        p.add_argument("--shadows", type=int, metavar="N",
                       help="shadow models for the LiRA-style attack (default: 8 for up to 5,000 "
                            "training rows, else 0; each costs one full training)")
        p.add_argument("--out", default="compare", metavar="DIR",
                       help="folder for the results (JSON, Markdown table, PNG chart; default ./compare)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        add_settings_args(p)
        p.set_defaults(no_wait=False)

    def run(self, args: argparse.Namespace, env: Environment) -> int:
        from sisa.research.compare import compare, format_table

        if args.list_methods:
            return _list_methods(args)
        methods = _chosen_methods(args.methods)
        params = parse_method_settings(args.set)
        if args.shadows is not None and args.shadows < 0:
            raise SisaError(f"--shadows must be >= 0, got {args.shadows}")
        dataset, settings = dataset_and_settings(args)
        shadows = args.shadows if args.shadows is not None else (8 if len(dataset.train) <= 5000 else 0)
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise SisaError(f"--out {out} is not a folder")
        result = compare(dataset, settings, args.forget, methods=methods, method_params=params,
                         sisa=not args.no_sisa, shadows=shadows, info=info)
        result = _finite(result)
        result.update(run_record(args.argv))
        stem = re.sub(r"[^\w.-]+", "-", f"{Path(dataset.spec).name}-{args.forget}").strip("-")
        chart = _write_results(result, out, stem)
        exact = result["sisa_exactness"]
        lines = [format_table(result)]
        if exact is not None:
            lines.append(f"sisa: after 'sisa delete', {exact['checkpoints']} checkpoints "
                         f"{'identical to' if exact['identical_checkpoints'] else 'DIFFER from'} SISA trained "
                         f"without the forget rows (largest probability difference {exact['max_proba_difference']:.3g})")
        lines.append(f"speedup = retraining seconds ({result['retrain_seconds']:.1f} s) / method seconds; "
                     f"avg gap = mean |UA, MIA-eff, RA, TA - retrained's|")
        lines.append(f"results: {out / stem}.json, .md" + (", .png" if chart.exists() else ""))
        emit(args, result, "\n".join(lines))
        return 0 if exact is None or exact["identical_checkpoints"] else 1


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


def _write_results(result: dict[str, Any], out: Path, stem: str) -> Path:
    """Write ``out/stem``.json, .md and (with matplotlib) .png; returns the chart's path."""
    from sisa.research.compare import format_table, write_chart

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown_header(result) + "\n\n" + format_table(result, markdown=True) + "\n")
    chart = out / f"{stem}.png"
    if not write_chart(result, chart):
        info("matplotlib is not installed: no chart (pip install 'sisa[plots]')")
    return chart
