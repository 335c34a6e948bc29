import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from helpers import make_table
from hypothesis import given, settings
from hypothesis import strategies as st

from sisa.data.dataset import Dataset, Table, plain, preview
from sisa.data.sources import held_out_mask, load
from sisa.errors import SisaError


def write_idx(folder: Path, n_train: int = 30, n_test: int = 12, size: int = 28, gz: bool = True,
              seed: int = 0) -> dict[str, np.ndarray]:
    """The four IDX files of a small random image dataset; returns the images written, by split."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        written[prefix] = images
        blobs = {f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, size, size) + images.tobytes(),
                 f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + labels.tobytes()}
        for name, blob in blobs.items():
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return written


def test_digits_is_offline_with_a_hash_held_out_test_split():
    ds = load("digits")
    assert ds.shape == (1, 8, 8) and ds.classes == list(range(10))
    assert len(ds.train) + len(ds.test) == 1797
    assert 0.15 < len(ds.test) / 1797 < 0.25
    assert set(ds.train.ids).isdisjoint(ds.test.ids)
    assert ds.train.X.max() == 16 and ds.scale == 1 / 16
    again = load("digits")
    assert np.array_equal(again.test.ids, ds.test.ids)


def test_test_split_depends_on_the_id_alone():
    ids = np.arange(1000)
    mask = held_out_mask(ids, 0.3)
    perm = np.random.default_rng(1).permutation(1000)
    assert np.array_equal(held_out_mask(ids[perm], 0.3), mask[perm])


@pytest.mark.parametrize("name", ["data.csv", "data.parquet"])
def test_tables_int_ids(table_file, name):
    path = table_file(name)
    kind = "csv" if name.endswith(".csv") else "parquet"
    ds = load(f"{kind}:{path}")
    assert ds.id_kind == "int" and ds.shape == (6,) and ds.classes == [0, 1, 2]
    assert ds.feature_names == [f"f{j}" for j in range(6)]
    assert len(ds.train) + len(ds.test) == 240
    assert load(str(path)).train.ids.tolist() == ds.train.ids.tolist()  # bare path by extension


def test_csv_and_parquet_give_the_same_ids(table_file):
    a = load(f"csv:{table_file('d.csv')}")
    b = load(f"parquet:{table_file('d.parquet')}")
    assert a.train.ids.tolist() == b.train.ids.tolist()
    assert np.allclose(a.train.X, b.train.X)


def test_string_ids_labels_and_custom_columns(table_file):
    table = make_table(str_ids=True).rename_columns(
        ["user", "target"] + [f"f{j}" for j in range(6)])
    table = table.set_column(1, "target", pa.array([["cat", "dog", "emu"][i % 3] for i in range(240)]))
    path = table_file("s.csv", table=table)
    ds = load(f"csv:{path}", id_col="user", label_col="target")
    assert ds.id_kind == "str" and ds.classes == ["cat", "dog", "emu"]
    assert all(i.startswith("user-") for i in ds.train.ids)


def test_leading_zero_ids_stay_text(tmp_path):
    path = tmp_path / "z.csv"
    path.write_text("id,label,x\n007,0,1.0\n8,1,2.0\n9,0,3.0\n")
    ds = load(f"csv:{path}", test_spec=f"csv:{path}")
    assert sorted(ds.train.ids.tolist()) == ["007", "8", "9"]


def test_separate_test_data(table_file):
    train = table_file("train.parquet", n=120)
    test = table_file("test.parquet", n=30, seed=0)
    ds = load(f"parquet:{train}", test_spec=f"parquet:{test}")
    assert len(ds.train) == 120 and len(ds.test) == 30


@pytest.mark.parametrize("content, message", [
    ("id,label,x\n1,0,1.0\n1,1,2.0\n", "duplicate ids in column 'id': 1"),
    ("id,label,x\n1,0,1.0\n,1,2.0\n", "has 1 missing values"),
    ("id,x\n1,1.0\n2,2.0\n", "no label column 'label'"),
    ("label,x\n0,1.0\n1,2.0\n", "no id column 'id'"),
    ("id,label,x\n1,0,1.0\n2,1,abc\n", "feature column 'x' is not numeric"),
    ("id,label,x\n1,0,1.0\n2,1,nan\n", "feature column 'x' has 1 missing, NaN or infinite values"),
    ("id,label,x\n1,0,1.0\n2,1,\n", "feature column 'x' has 1 missing"),
    ("id,label\n1,0\n2,1\n", "no feature columns"),
    ("id,label,x\n1,0.5,1.0\n2,1,2.0\n", "non-integer numbers"),
    ("id,label,x\n1,,1.0\n2,1,2.0\n", "label column 'label' has 1 missing values"),
])
def test_bad_tables_are_refused_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SisaError, match=message):
        load(f"csv:{path}")


def test_bad_specs(tmp_path):
    with pytest.raises(SisaError, match="unknown dataset 'imagenet'"):
        load("imagenet")
    with pytest.raises(SisaError, match="no such file"):
        load(f"csv:{tmp_path / 'nope.csv'}")
    unreadable = tmp_path / "x.parquet"
    unreadable.write_bytes(b"not parquet at all")
    with pytest.raises(SisaError, match="cannot read"):
        load(f"parquet:{unreadable}")
    with pytest.raises(SisaError, match="test fraction"):
        load("digits", test_fraction=1.5)


def test_fashion_mnist_from_flat_gz_files(tmp_path):
    written = write_idx(tmp_path / "fm", gz=True)
    ds = load(f"fashion-mnist:{tmp_path / 'fm'}")
    assert ds.shape == (1, 28, 28) and len(ds.train) == 30 and len(ds.test) == 12
    assert ds.train.X.dtype == np.uint8 and ds.train.ids.tolist() == list(range(30))
    assert np.array_equal(ds.train.X[:, 0], written["train"]) and np.array_equal(ds.test.X[:, 0], written["t10k"])
    assert ds.test.ids.tolist() == list(range(30, 42))
    assert ds.train.y.tolist() == [i % 10 for i in range(30)]
    assert ds.defaults == {"model": "cnn", "epochs": 5, "batch_size": 64, "lr": 3e-3}


def test_mnist_from_torchvision_layout(tmp_path):
    written = write_idx(tmp_path / "MNIST" / "raw", gz=False, size=16)
    ds = load(f"mnist:{tmp_path}")
    assert ds.shape == (1, 16, 16) and len(ds.train) == 30
    assert np.array_equal(ds.train.X[:, 0], written["train"])


def test_missing_image_files_say_where_to_put_them(tmp_path):
    with pytest.raises(SisaError, match=r"fashion-mnist files not found in .*train-images-idx3-ubyte"):
        load(f"fashion-mnist:{tmp_path}")
    with pytest.raises(SisaError, match="cifar10 files not found"):
        load(f"cifar10:{tmp_path}")


def test_corrupt_idx_files_are_refused(tmp_path):
    write_idx(tmp_path / "fm", gz=True)
    (tmp_path / "fm" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    with pytest.raises(SisaError, match="fashion-mnist file .*train-images-idx3-ubyte.gz is not a valid IDX file"):
        load(f"fashion-mnist:{tmp_path / 'fm'}")


IMAGES = struct.pack(">IIII", 0x803, 2, 3, 3) + bytes(18)


@pytest.mark.parametrize("blob, message", [
    (b"\x01\x00\x08\x03" + IMAGES[4:], "it does not start with an IDX magic number"),
    (b"\x00\x00", "it does not start with an IDX magic number"),
    (struct.pack(">IIII", 0x0D03, 2, 3, 3) + bytes(72),
     r"its values are of IDX type 0x0d, not unsigned bytes \(0x08\)"),
    (struct.pack(">III", 0x802, 2, 9) + bytes(18), "it has 2 dimensions, not 3"),
    (IMAGES[:10], "it ends inside its header"),
    (IMAGES[:-1], r"its header gives 2x3x3 = 18 values, but only 17 follow"),
    (IMAGES + b"\x00", r"more than the 18 values its header gives \(2x3x3\) follow"),
], ids=["magic", "short-magic", "float32", "dimensions", "short-header", "truncated", "trailing"])
def test_malformed_idx_files_say_what_is_wrong(tmp_path, blob, message):
    write_idx(tmp_path / "fm", gz=False, size=3)
    (tmp_path / "fm" / "t10k-images-idx3-ubyte").write_bytes(blob)
    expected = f"fashion-mnist file .*t10k-images-idx3-ubyte is not a valid IDX file: {message}"
    with pytest.raises(SisaError, match=expected):
        load(f"fashion-mnist:{tmp_path / 'fm'}")


def test_a_damaged_gzip_stream_is_refused(tmp_path):
    write_idx(tmp_path / "fm", gz=True)
    labels = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])  # cut inside the compressed stream
    with pytest.raises(SisaError, match="cannot read fashion-mnist file .*train-labels-idx1-ubyte.gz"):
        load(f"fashion-mnist:{tmp_path / 'fm'}")
    labels.write_bytes(b"\x1f\x8b not a gzip stream")
    with pytest.raises(SisaError, match="cannot read fashion-mnist file"):
        load(f"fashion-mnist:{tmp_path / 'fm'}")


def test_image_and_label_counts_must_agree(tmp_path):
    write_idx(tmp_path / "fm", gz=False, size=3)
    (tmp_path / "fm" / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 29) + bytes(29))
    with pytest.raises(SisaError, match="30 images but 29 labels"):
        load(f"fashion-mnist:{tmp_path / 'fm'}")


def test_digits_are_scikit_learns():
    from sklearn.datasets import load_digits

    ds = load("digits")
    bunch = load_digits()
    ids = np.concatenate([ds.train.ids, ds.test.ids])
    X = np.concatenate([ds.train.X, ds.test.X])[np.argsort(ids)]
    y = np.concatenate([ds.train.y, ds.test.y])[np.argsort(ids)]
    assert X.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(X.reshape(len(X), 64), bunch.data) and np.array_equal(y, bunch.target)


def test_cifar10_binary_version(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}.bin", 4) for i in range(1, 6)] + [("test_batch.bin", 6)]:
        records = np.concatenate([(np.arange(n) % 10).astype(np.uint8)[:, None],
                                  rng.integers(0, 256, (n, 3072), dtype=np.uint8)], axis=1)
        (folder / name).write_bytes(records.tobytes())
    ds = load(f"cifar10:{tmp_path}")
    assert ds.shape == (3, 32, 32) and len(ds.train) == 20 and len(ds.test) == 6
    assert ds.train.y.tolist()[:4] == [0, 1, 2, 3]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_cifar10_python_batches_that_are_not_genuine_are_never_unpickled(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(SisaError, match="refusing to unpickle"):
        load(f"cifar10:{tmp_path}")
    assert not marker.exists()


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian_package():
    ds = load("fashion-mnist")  # found in /usr/share/datasets/fashion-mnist without a path
    assert ds.shape == (1, 28, 28) and len(ds.train) == 60000 and len(ds.test) == 10000
    assert np.bincount(ds.train.y).tolist() == [6000] * 10


def test_builtin_test_rows_have_ids_of_their_own():
    digits = load("digits")
    assert not set(digits.train.ids.tolist()) & set(digits.test.ids.tolist())


def test_a_table_with_a_header_and_no_rows_says_so(tmp_path):
    (tmp_path / "empty.csv").write_text("id,label,f0\n")
    with pytest.raises(SisaError, match="has no rows"):
        load(f"csv:{tmp_path / 'empty.csv'}")


def test_a_label_of_the_other_kind_is_named_as_such():
    digits = load("digits")
    with pytest.raises(SisaError, match="it is str where the training's labels are int"):
        digits.label_index(np.array(["2"], dtype=object), "the added data")


def reference_label_index(classes, labels, what):
    """Dataset.label_index as a loop over rows, as it was: the vectorised one must match it."""
    lookup = {value: i for i, value in enumerate(classes)}
    try:
        return np.fromiter((lookup[plain(v)] for v in labels), dtype=np.int64, count=len(labels))
    except KeyError as exc:
        label = exc.args[0]
        hint = ""
        if str(label) in {str(c) for c in classes}:
            hint = (f"; it is {type(label).__name__} where the training's labels are "
                    f"{type(classes[0]).__name__}: give labels of the same kind")
        raise SisaError(f"{what} has label {label!r}, which the training data does not have "
                        f"(classes: {preview(classes)}){hint}") from None


def label_outcome(f, *args):
    try:
        out = f(*args)
    except Exception as exc:  # noqa: BLE001 - the error must be the same one
        return type(exc), str(exc)
    return out.tolist(), out.dtype, out.shape


def object_array(values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


LABEL_VALUE = (st.integers(-3, 12) | st.text(st.sampled_from("ab1\x00é😀"), max_size=3)
               | st.sampled_from([1.0, 2.5, -0.0, float("nan"), True, False, 2**64 - 1]))
LABEL_FORMS = [list, object_array, np.array, lambda v: np.array(v, dtype=str), lambda v: np.array(v, dtype=object),
               lambda v: [np.int64(x) if type(x) is int and abs(x) < 2**62 else x for x in v],
               lambda v: object_array([np.str_(x) if isinstance(x, str) else x for x in v])]


@settings(max_examples=400, deadline=None)
@given(classes=st.lists(LABEL_VALUE, min_size=1, max_size=6)
       | st.sampled_from([list(range(10)), ["a", "b", "c"], [0, 1]]),
       data=st.data())
def test_label_index_is_the_per_row_lookup(classes, data):
    values = data.draw(st.lists(st.sampled_from(classes) | LABEL_VALUE, max_size=30))
    form = data.draw(st.sampled_from(LABEL_FORMS))
    try:
        labels = form(values)
    except (ValueError, OverflowError, TypeError):
        return  # numpy has no such array
    ds = Dataset("x", Table(np.arange(1), np.zeros((1, 1)), None), None, (1,), classes)
    assert (label_outcome(ds.label_index, labels, "test data")
            == label_outcome(reference_label_index, classes, labels, "test data"))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.uint64, np.float64, np.float32, bool, str])
def test_label_index_of_typed_arrays_is_the_per_row_lookup(dtype):
    for classes in (list(range(10)), [str(i) for i in range(10)], [0.5, 1.0, 3.0], [True, False], [1, "1"]):
        ds = Dataset("x", Table(np.arange(1), np.zeros((1, 1)), None), None, (1,), classes)
        for values in ([0, 3, 9, 1], [1, 1, 0], [3, 11, 12], [], np.arange(3000) % 10):
            labels = np.asarray(values).astype(dtype)
            for given_labels in (labels, labels[::-1], labels.reshape(-1, 1) if len(labels) else labels):
                assert (label_outcome(ds.label_index, given_labels, "the added data")
                        == label_outcome(reference_label_index, classes, given_labels, "the added data"))
