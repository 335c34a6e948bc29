"""How sisa's costs grow with the number of rows, on synthetic tables, one cold process per step.

For each size in --rows the script makes (or takes from --cache-dir) a Parquet training table of
that many rows: `id` (int64, 0..rows-1), `label` (int64, 10 classes: the argmax of a fixed random
linear map of the features, so a linear model can learn it) and 100 float32 features `f0..f99`
(standard normal), plus a test table of --test-share x rows with ids after the training ids,
given as --test-data so every training id is deletable. Generation streams in chunks through
pyarrow's ParquetWriter and is timed apart from everything else.

Then, in a fresh workspace, each step runs as its own process, as a user would run it:

    sisa train --data parquet:TRAIN --test-data parquet:TEST --shards S --slices R --model M
               --threads T --epochs E [--batch-size B] --executor local
    sisa delete --ids ID --no-serve --executor local             (one random training id)
    sisa delete --ids-file FILE --no-serve --executor local      (--batch-ids other random ids)
    sisa status
    sisa eval

each with --workdir and --json, one after another on the same workspace (the batch deletion
runs after the one-id deletion). Per step it records:

- wall seconds: from starting the process to reaping it (Python start-up and imports included);
- CPU seconds: user + system time of the process and the children it waited for (os.wait4);
- peak RSS: ru_maxrss from os.wait4, the largest resident set of the process (or of one of
  its waited-for children), not a sum;
- bytes written: the process runs `sisa.cli.main` (the function behind the `sisa` command) in a
  `python -c` wrapper that copies /proc/self/io to a side file when main returns. `wchar` is
  every byte the process handed to write()-like calls (files, SQLite, stdout and stderr,
  including files it removed later); `write_bytes` is what it sent towards the storage layer
  (0 on filesystems without a block device, such as tmpfs; writeback of deleted files shows in
  `cancelled_write_bytes`). The table shows `wchar`; the JSON has every counter. A process killed
  before main returns (out of memory, --timeout) has none;
- workspace bytes: the apparent size of every file under the workspace after the step.

A step that fails (exit status, or a negative signal number when killed; --timeout seconds at
most) is recorded with the end of its stderr, and the cell goes on (after a failed train, the
other steps of that cell are skipped). --single-shard-rows adds one cell with --shards 1 at
that size (0: none). Writes <out>/<name>.json (the run record and every cell, rewritten after
each cell), <name>.md (the table) and <name>.png (CPU seconds and peak RSS against rows,
log-log; needs matplotlib).

    python benchmarks/scale.py                                    # 50k, 1M, 10M rows; S 8, R 4, logreg
    python benchmarks/scale.py --rows 50000,200000 --single-shard-rows 0 --name scale-small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _common import pyplot, run_record  # benchmarks/ is the script's folder

RESULTS = Path(__file__).parent / "results"
FEATURES = 100
CLASSES = 10
CHUNK_ROWS = 200_000
STEPS = ("train", "delete_one", "delete_batch", "status", "eval")

# Runs `sisa ARGS` in this process as the console script does, then copies /proc/self/io (read
# first, so the copy is not counted) to the file named by the first argument.
WRAPPER = """
import sys
from sisa.cli import main
io_path, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["sisa", *argv]
try:
    code = main(argv)
finally:
    try:
        with open("/proc/self/io") as f:
            text = f.read()
    except OSError:
        text = ""
    with open(io_path, "w") as f:
        f.write(text)
sys.exit(code)
"""


def ints(text: str) -> list[int]:
    return [int(v.replace("_", "")) for v in text.split(",") if v.strip()]


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=ints, default=[50_000, 1_000_000, 10_000_000],
                   help="training rows per cell, comma-separated (default 50000,1000000,10000000)")
    p.add_argument("--shards", type=int, default=8, help="shards S of every cell but the single-shard one (default 8)")
    p.add_argument("--slices", type=int, default=4, help="slices per shard R (default 4)")
    p.add_argument("--model", default="logreg", help="sisa train --model (default logreg)")
    p.add_argument("--threads", type=int, default=1, help="sisa train --threads (default 1)")
    p.add_argument("--epochs", type=int, default=1,
                   help="sisa train --epochs (default 1: every slice then trains one epoch, R epochs in all; "
                        "sisa's own default of 30 would take hours at 10M rows)")
    p.add_argument("--batch-size", type=int, help="sisa train --batch-size (default: sisa's, 32)")
    p.add_argument("--single-shard-rows", type=int, default=1_000_000,
                   help="add a cell with --shards 1 at this many rows (default 1000000; 0: none)")
    p.add_argument("--batch-ids", type=int, default=1000,
                   help="ids of the batch deletion (default 1000; at most half the rows)")
    p.add_argument("--test-share", type=float, default=0.1,
                   help="test rows as a share of the training rows, at least 100 (default 0.1)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the data and the ids deleted (training uses sisa's default seed; default 0)")
    p.add_argument("--timeout", type=float, default=3 * 3600, help="seconds each step may run (default 10800)")
    p.add_argument("--cache-dir", type=Path, default=default_cache(),
                   help="generated tables, kept by (rows, test rows, seed) for later runs (default %(default)s)")
    p.add_argument("--work-dir", type=Path,
                   help="where workspaces are made, one cell at a time, removed after it (default: system temp)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="scale", help="results name (default scale)")
    args = p.parse_args(argv)
    if not args.rows or min(args.rows) < 1 or args.single_shard_rows < 0:
        p.error("--rows needs positive sizes and --single-shard-rows must be >= 0")
    return args


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sisa-benchmarks" / "scale"


# --- data ------------------------------------------------------------------------------------


def chunk_table(seed: list[int], first_id: int, n: int, weights: np.ndarray):
    import pyarrow as pa

    x = np.random.default_rng(seed).standard_normal((n, FEATURES), dtype=np.float32)
    labels = (x @ weights).argmax(axis=1).astype(np.int64)
    columns = {"id": np.arange(first_id, first_id + n, dtype=np.int64), "label": labels}
    columns.update({f"f{j}": x[:, j] for j in range(FEATURES)})
    return pa.table(columns)


def write_table(path: Path, stream: int, first_id: int, rows: int, seed: int) -> None:
    """Writes the table chunk by chunk to a side file, renamed into place only when complete."""
    import pyarrow.parquet as pq

    weights = np.random.default_rng([seed, 0]).standard_normal((FEATURES, CLASSES)).astype(np.float32)
    partial = path.with_name(path.name + ".partial")
    writer = None
    for k, start in enumerate(range(0, rows, CHUNK_ROWS)):
        table = chunk_table([seed, stream, k], first_id + start, min(CHUNK_ROWS, rows - start), weights)
        writer = writer or pq.ParquetWriter(partial, table.schema)
        writer.write_table(table)
    writer.close()
    os.replace(partial, path)


def ensure_data(cache: Path, rows: int, test_rows: int, seed: int) -> dict:
    """The cell's training and test tables, generated unless cached; generation time is apart."""
    cache.mkdir(parents=True, exist_ok=True)
    stem = cache / f"scale-r{rows}-t{test_rows}-s{seed}"
    train, test = Path(f"{stem}-train.parquet"), Path(f"{stem}-test.parquet")
    started, made = time.perf_counter(), False
    for path, stream, first, n in ((train, 1, 0, rows), (test, 2, rows, test_rows)):
        if not path.exists():
            print(f"generating {path} ({n} rows)", file=sys.stderr, flush=True)
            write_table(path, stream, first, n, seed)
            made = True
    return {"train": str(train), "test": str(test), "rows": rows, "test_rows": test_rows,
            "train_file_bytes": train.stat().st_size, "test_file_bytes": test.stat().st_size,
            "generated": made, "generation_seconds": round(time.perf_counter() - started, 2) if made else 0.0}


# --- one measured process --------------------------------------------------------------------


def reap(proc: subprocess.Popen, timeout: float) -> tuple:
    """Waits for proc with os.wait4: (rusage, end time, timed out); kills its group on timeout."""
    box: dict = {}

    def wait() -> None:
        box["waited"] = os.wait4(proc.pid, 0)
        box["end"] = time.perf_counter()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(timeout)
    timed_out = waiter.is_alive()
    if timed_out:
        os.killpg(proc.pid, signal.SIGKILL)
        waiter.join()
    _, status, usage = box["waited"]
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    return usage, box["end"], timed_out


def read_io(path: Path):
    if not path.exists() or not path.read_text().strip():
        return None
    return {k.strip(): int(v) for k, v in (line.split(":") for line in path.read_text().splitlines())}


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def scalars(text: str) -> dict:
    """The top-level numbers and strings of a command's --json output (lists and objects left out)."""
    try:
        out = json.loads(text.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
    keep = (int, float, str, bool, type(None))
    return {k: v for k, v in out.items() if isinstance(v, keep)} if isinstance(out, dict) else {}


def measure(sisa_args: list[str], logs: Path, step: str, timeout: float) -> dict:
    """Runs `sisa ARGS --json` cold in its own process and measures it."""
    io_path, out_path, err_path = (logs / f"{step}.{s}" for s in ("io", "stdout", "stderr"))
    command = [sys.executable, "-c", WRAPPER, str(io_path), *sisa_args, "--json"]
    with open(out_path, "w") as out, open(err_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, start_new_session=True)
        usage, ended, timed_out = reap(proc, timeout)
    row = {"command": "sisa " + " ".join(sisa_args + ["--json"]), "exit_code": proc.returncode,
           "timed_out": timed_out, "wall_seconds": round(ended - started, 3),
           "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3), "user_seconds": round(usage.ru_utime, 3),
           "sys_seconds": round(usage.ru_stime, 3), "peak_rss_bytes": usage.ru_maxrss * 1024,
           "io": read_io(io_path), "output": scalars(out_path.read_text())}
    row["ok"] = proc.returncode == 0 and not timed_out
    if not row["ok"]:
        row["stderr_tail"] = err_path.read_text()[-2000:]
    return row


# --- one cell --------------------------------------------------------------------------------


def step_commands(args, data: dict, shards: int, workdir: Path, ids: dict) -> dict:
    train = ["train", "--data", f"parquet:{data['train']}", "--test-data", f"parquet:{data['test']}",
             "--shards", str(shards), "--slices", str(args.slices), "--model", args.model,
             "--threads", str(args.threads), "--epochs", str(args.epochs), "--executor", "local"]
    if args.batch_size:
        train += ["--batch-size", str(args.batch_size)]
    delete = ["delete", "--no-serve", "--executor", "local"]
    commands = {"train": train, "delete_one": delete + ["--ids", str(ids["one"])],
                "delete_batch": delete + ["--ids-file", str(ids["file"])], "status": ["status"], "eval": ["eval"]}
    return {step: argv + ["--workdir", str(workdir)] for step, argv in commands.items()}


def pick_ids(rows: int, wanted: int, seed: int, scratch: Path) -> dict:
    """One training id for the one-id deletion and up to `wanted` others (in a file) for the batch."""
    k = max(0, min(wanted, rows // 2))
    chosen = np.random.default_rng([seed, rows, 3]).choice(rows, size=k + 1, replace=False)
    path = scratch / "batch-ids.txt"
    path.write_text("".join(f"{i}\n" for i in chosen[1:]))
    return {"one": int(chosen[0]), "batch_count": k, "file": path}


def run_cell(args, rows: int, shards: int, root: Path) -> dict:
    test_rows = max(100, round(rows * args.test_share))
    data = ensure_data(args.cache_dir, rows, test_rows, args.seed)
    scratch = root / f"r{rows}-s{shards}"
    (scratch / "logs").mkdir(parents=True)
    workdir = scratch / "workspace"
    ids = pick_ids(rows, args.batch_ids, args.seed, scratch)
    cell = {"rows": rows, "shards": shards, "slices": args.slices, "data": data, "one_id": ids["one"],
            "batch_ids": ids["batch_count"], "steps": {}}
    for step, argv in step_commands(args, data, shards, workdir, ids).items():
        if step != "train" and not cell["steps"]["train"]["ok"]:
            cell["steps"][step] = {"ok": False, "skipped": "train failed"}
            continue
        print(f"rows {rows}, S {shards}: {step}", file=sys.stderr, flush=True)
        result = measure(argv, scratch / "logs", step, args.timeout)
        result["workspace_bytes"] = tree_bytes(workdir) if workdir.exists() else 0
        cell["steps"][step] = result
    shutil.rmtree(scratch, ignore_errors=True)
    return cell


# --- output ----------------------------------------------------------------------------------


def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def cell_text(step: dict, extra: str = "") -> str:
    """wall / CPU / peak RSS [/ extra], or why there is no figure."""
    if step.get("skipped"):
        return "skipped"
    if not step["ok"]:
        return "timed out" if step["timed_out"] else f"failed (exit {step['exit_code']})"
    text = f"{step['wall_seconds']:.1f} / {step['cpu_seconds']:.1f} / {mib(step['peak_rss_bytes'])}"
    if extra == "disk":
        text += f" / {mib(step['workspace_bytes'])}"
    elif extra == "written":
        text += f" / {mib((step['io'] or {}).get('wchar'))}"
    return text


def table_lines(result: dict) -> list[str]:
    batch = result["settings"]["batch_ids"]
    lines = ["| rows | S | train: wall s / CPU s / peak RSS MiB / workspace MiB | train accuracy | "
             "delete 1 id: wall s / CPU s / RSS MiB / written MiB | "
             f"delete {batch} ids: wall s / CPU s / RSS MiB / written MiB | status: wall s / CPU s / RSS MiB | "
             "eval: wall s / CPU s / RSS MiB |", "|---:|---:|---|---:|---|---|---|---|"]
    for c in result["cells"]:
        s = c["steps"]
        accuracy = s["train"].get("output", {}).get("accuracy")
        lines.append(f"| {c['rows']:,} | {c['shards']} | {cell_text(s['train'], 'disk')} | "
                     f"{'-' if accuracy is None else f'{accuracy:.3f}'} | {cell_text(s['delete_one'], 'written')} | "
                     f"{cell_text(s['delete_batch'], 'written')} | {cell_text(s['status'])} | "
                     f"{cell_text(s['eval'])} |")
    return lines


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].replace("`", "'") if lines else "(no stderr)"


def markdown(result: dict) -> str:
    s, m = result["settings"], result["machine"]
    failures = [f"- {c['rows']:,} rows, S {c['shards']}, {name}: exit {st['exit_code']}"
                f"{' (timed out)' if st['timed_out'] else ''}: `{last_line(st['stderr_tail'])}`"
                for c in result["cells"] for name, st in c["steps"].items() if "stderr_tail" in st]
    return "\n".join([
        f"# How sisa's costs grow with rows: {s['model']}, S = {s['shards']}, R = {s['slices']}, "
        f"{s['epochs']} epoch(s), {s['threads']} thread(s)",
        "",
        f"{result['date']}; `{result['command']}`; {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} "
        f"({m['cpu_capability']}).",
        "",
        f"Synthetic tables: int64 id and label ({CLASSES} classes from a random linear map), {FEATURES} float32 "
        f"features; test rows {s['test_share']:.0%} of the training rows, a separate table. Each step is a cold "
        "`sisa` process (`--executor local`, deletions `--no-serve`), one after another on one workspace. CPU is "
        "user + system seconds (os.wait4); peak RSS is ru_maxrss; written is `wchar` from /proc/self/io (bytes "
        "handed to write(), stdout and later-removed files included); workspace is the files' apparent size "
        "after training. Data generation is not timed.",
        "",
        *table_lines(result),
        "",
        *(["Failures:", "", *failures, ""] if failures else []),
    ])


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    shards = result["settings"]["shards"]
    groups = [(shards, "-o")] + ([(1, "x")] if shards != 1 else [])  # the single-shard cell as marks
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, scale, label in ((axes[0], "cpu_seconds", 1, "CPU seconds (user + system)"),
                                  (axes[1], "peak_rss_bytes", 2**20, "peak RSS (MiB)")):
        for step in STEPS:
            for shards, style in groups:
                points = sorted((c["rows"], c["steps"][step][key] / scale) for c in result["cells"]
                                if c["shards"] == shards and c["steps"][step].get("ok"))
                if points:
                    ax.plot(*zip(*points), style, label=f"{step}, S = {shards}", color=f"C{STEPS.index(step)}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training rows")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"sisa cost against rows: {result['settings']['model']}, R = {result['settings']['slices']} "
                 f"({result['date'][:10]}, {result['machine']['cpus']} CPUs)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save(result: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    plot(result, out / f"{name}.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    cells = [(rows, args.shards) for rows in args.rows]
    if args.single_shard_rows:
        cells.append((args.single_shard_rows, 1))
    settings = {k: getattr(args, k) for k in ("shards", "slices", "model", "threads", "epochs", "batch_size",
                                              "batch_ids", "test_share", "seed", "timeout")}
    result = dict(run_record(), settings=settings, cells=[])
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sisa-scale-", dir=args.work_dir) as tmp:
        for rows, shards in cells:
            result["cells"].append(run_cell(args, rows, shards, Path(tmp)))
            save(result, args.out, args.name)  # a long run keeps what it measured so far
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
