"""A Fashion-MNIST subset as two Parquet tables, for comparisons that train many models.

``sisa compare`` with ``--seeds``, ``--draws`` and ``--fq-models`` trains dozens of models; on the
full 60,000 rows a cnn takes minutes each on a small CPU. This writes ``--train-rows`` training
rows and ``--test-rows`` test rows (drawn with ``--seed``, ids kept from the full set), features
scaled to [0, 1] as the image loader scales them, as ``DIR/train.parquet`` and ``DIR/test.parquet``::

    python benchmarks/fmnist_subset.py --out /tmp/fmnist-10k
    sisa compare --data parquet:/tmp/fmnist-10k/train.parquet --test-data parquet:/tmp/fmnist-10k/test.parquet ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sisa.data.sources import load


def table(ids: np.ndarray, X: np.ndarray, y: np.ndarray, scale: float) -> pa.Table:
    flat = (X.reshape(len(X), -1).astype(np.float32) * np.float32(scale))
    columns = {"id": pa.array(ids), "label": pa.array(y)}
    columns.update({f"px{j}": pa.array(flat[:, j]) for j in range(flat.shape[1])})
    return pa.table(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write train.parquet and test.parquet to")
    parser.add_argument("--train-rows", type=int, default=10_000)
    parser.add_argument("--test-rows", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist[:DIR] (default: the system's files)")
    args = parser.parse_args()
    data = load(args.data)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows, n in (("train", data.train, args.train_rows), ("test", data.test, args.test_rows)):
        pick = np.sort(rng.choice(len(rows), size=min(n, len(rows)), replace=False))
        pq.write_table(table(rows.ids[pick], rows.X[pick], rows.y[pick], data.scale), args.out / f"{name}.parquet")
        print(f"{args.out / name}.parquet: {len(pick)} rows")


if __name__ == "__main__":
    main()
