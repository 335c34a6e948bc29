"""``imagefolder:DIR``: ImageFolder layout, path ids, the fixed transform, errors, and the CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, training_ids
from PIL import Image

from sisa.data.folders import parse_image_size
from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.workspace.files import Workspace

CLASSES = ("cat", "dog", "fox")
ODD = {"dog/010.png", "dog/011.png"}
"""Images written 10 wide and 6 high, which the loader resizes to the first image's 8x8."""


def pattern(k: int, n: int, height: int = 8, width: int = 8) -> np.ndarray:
    """A class-dependent gray image: class ``k`` is bright in its own band of rows."""
    pixels = np.full((height, width), 20 + n, dtype=np.uint8)
    band = height // 3
    pixels[k * band:(k + 1) * band] = 220 - n
    return pixels


def write_folder(root: Path, classes=CLASSES, per_class: int = 12, rgb: bool = False) -> Path:
    """``classes`` x ``per_class`` PNGs under ``root/<class>/NNN.png`` (plus files to ignore)."""
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for n in range(per_class):
            rel = f"{name}/{n:03d}.png"
            pixels = pattern(k, n, 6, 10) if rel in ODD else pattern(k, n)
            image = Image.fromarray(np.stack([pixels, pixels // 2, 255 - pixels], -1) if rgb else pixels)
            image.save(root / rel)
    (root / CLASSES[0] / "notes.txt").write_text("not an image")
    (root / CLASSES[0] / ".hidden.png").write_bytes(b"ignored")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.png").write_bytes(b"ignored")
    (root / "loose.png").write_bytes(b"a file beside the class folders: ignored")
    return root


def all_rows(ds) -> dict:
    """id -> (pixels, label) over the training and test rows."""
    return {i: (x, y) for t in (ds.train, ds.test) for i, x, y in zip(t.ids.tolist(), t.X, t.y.tolist())}


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "images")


def test_ids_are_relative_paths_and_classes_the_sorted_folders(folder):
    ds = load(f"imagefolder:{folder}")
    rows = all_rows(ds)
    assert sorted(rows) == [f"{c}/{n:03d}.png" for c in CLASSES for n in range(12)]
    assert ds.id_kind == "str" and ds.classes == list(CLASSES)
    assert ds.shape == (1, 8, 8) and ds.train.X.dtype == np.uint8 and ds.scale == 1 / 255
    assert ds.defaults == {"model": "cnn"} and ds.spec == f"imagefolder:{folder}"
    assert all(label == rel.split("/")[0] for rel, (_, label) in rows.items())
    assert np.array_equal(rows["fox/004.png"][0][0], pattern(2, 4))
    assert list(ds.train.ids) == sorted(ds.train.ids) and 0 < len(ds.test) < len(ds.train)
    assert np.array_equal(load(f"imagefolder:{folder}").train.ids, ds.train.ids)


def test_images_of_another_size_are_resized_bilinear(folder):
    rows = all_rows(load(f"imagefolder:{folder}"))
    expected = Image.fromarray(pattern(1, 10, 6, 10)).resize((8, 8), Image.BILINEAR)
    assert np.array_equal(rows["dog/010.png"][0][0], np.asarray(expected))


@pytest.mark.parametrize("size, shape", [(4, (1, 4, 4)), ((6, 10), (1, 6, 10)), ("5x7", (1, 5, 7)),
                                         ([8, 8], (1, 8, 8))])
def test_image_size_option(folder, size, shape):
    ds = load(f"imagefolder:{folder}", image_size=size)
    assert ds.shape == shape and ds.train.X.shape[1:] == shape
    rows = all_rows(ds)
    expected = Image.fromarray(pattern(1, 10, 6, 10)).resize(shape[:0:-1], Image.BILINEAR)
    if shape[1:] != (6, 10):
        assert np.array_equal(rows["dog/010.png"][0][0], np.asarray(expected))
    else:  # already that size: stored as it is
        assert np.array_equal(rows["dog/010.png"][0][0], pattern(1, 10, 6, 10))


def test_rgb_images_give_three_channels(tmp_path):
    root = write_folder(tmp_path / "rgb", rgb=True)
    ds = load(f"imagefolder:{root}")
    assert ds.shape == (3, 8, 8)
    pixels = pattern(0, 3)
    assert np.array_equal(all_rows(ds)["cat/003.png"][0], np.stack([pixels, pixels // 2, 255 - pixels]))


def test_first_image_decides_the_channels_and_16_bit_keeps_its_top_bits(folder):
    Image.fromarray(np.full((8, 8, 4), 90, dtype=np.uint8)).save(folder / "fox" / "rgba.png")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(folder / "fox" / "wide.png")
    rows = all_rows(load(f"imagefolder:{folder}"))
    assert rows["fox/rgba.png"][0].shape == (1, 8, 8)
    assert (rows["fox/wide.png"][0] == 40000 >> 8).all()


def test_upper_case_and_nested_images_are_found(folder):
    (folder / "cat" / "sub").mkdir()
    Image.fromarray(pattern(0, 1)).save(folder / "cat" / "sub" / "X.JPG", format="PNG")
    assert "cat/sub/X.JPG" in all_rows(load(f"imagefolder:{folder}"))


def test_a_separate_test_folder_is_read_whole_at_the_training_shape(folder, tmp_path):
    other = write_folder(tmp_path / "other", classes=("cat", "fox"), per_class=3, rgb=True)
    for path in other.rglob("0*.png"):  # its own names and a size of its own: 16x16
        Image.open(path).resize((16, 16)).save(path.with_name("t" + path.name))
        path.unlink()
    ds = load(f"imagefolder:{folder}", test_spec=f"imagefolder:{other}")
    assert sorted(ds.test.ids) == [f"{c}/t{n:03d}.png" for c in ("cat", "fox") for n in range(3)]
    assert ds.test.X.shape == (6, 1, 8, 8) and len(ds.train) == 36
    assert ds.label_index(ds.test.y, "test data").tolist() == [0, 0, 0, 2, 2, 2]
    (other / "emu").mkdir()
    Image.fromarray(pattern(0, 0)).save(other / "emu" / "e.png")
    with pytest.raises(SisaError, match="'emu'"):
        ds = load(f"imagefolder:{folder}", test_spec=f"imagefolder:{other}")
        ds.label_index(ds.test.y, "test data")


def test_errors_are_named(tmp_path, folder):
    with pytest.raises(SisaError, match="does not exist"):
        load(f"imagefolder:{tmp_path / 'missing'}")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SisaError, match="not a folder"):
        load(f"imagefolder:{tmp_path / 'file'}")
    with pytest.raises(SisaError, match="needs a folder"):
        load("imagefolder")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "a.png").write_bytes(b"")
    with pytest.raises(SisaError, match="no class subfolders"):
        load(f"imagefolder:{tmp_path / 'bare'}")
    with pytest.raises(SisaError, match="applies to imagefolder: data only"):
        load("digits", image_size=8)
    (folder / "dog" / "007.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(SisaError, match="cannot read image .*dog/007.png"):
        load(f"imagefolder:{folder}")


def test_an_empty_class_folder_and_a_single_class_are_refused(tmp_path, folder):
    (folder / "emu").mkdir()
    (folder / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(SisaError, match="'emu'.* hold no images"):
        load(f"imagefolder:{folder}")
    one = write_folder(tmp_path / "one", classes=("cat",), per_class=4)
    with pytest.raises(SisaError, match="only one class folder \\('cat'\\).*two classes"):
        load(f"imagefolder:{one}")


@pytest.mark.parametrize("bad", [0, -3, 4097, (8,) * 3, "8x", "axb", "", True, 2.5, (8, 0)])
def test_bad_image_sizes(bad, folder):
    with pytest.raises(SisaError, match="image size"):
        parse_image_size(bad)
    with pytest.raises(SisaError, match="image size"):
        load(f"imagefolder:{folder}", image_size=bad)


def test_train_delete_audit_predict_through_the_cli(folder, tmp_path):
    ws = tmp_path / "ws"
    result = run_cli("train", "--data", f"imagefolder:{folder}", "--workdir", ws, "--shards", "2",
                     "--slices", "2", "--epochs", "2", "--model", "cnn", "--image-size", "6x7", "--json")
    assert result.code == 0, result.err
    manifest = json.loads((ws / "shards" / "manifest.json").read_text())
    assert manifest["data"]["image_size"] == [6, 7] and manifest["data"]["shape"] == [1, 6, 7]
    ids = training_ids(ws)
    assert all(isinstance(i, str) for i in ids) and len(ids) == result.json["n_train"]
    gone = ids[3]
    result = run_cli("delete", "--workdir", ws, "--ids", gone)
    assert result.code == 0, result.err
    assert gone not in training_ids(ws) and len(training_ids(ws)) == len(ids) - 1
    result = run_cli("audit", "--workdir", ws, "--ids", gone)
    assert result.code == 0, result.err + result.out
    result = run_cli("predict", "--workdir", ws, "--input", f"imagefolder:{folder}", "--json")
    assert result.code == 0, result.err
    assert len(result.json["ids"]) == 36 and set(result.json["labels"]) <= set(CLASSES)
    # repair reloads the folder at the recorded 6x7, not the first image's 8x8
    shard_file = ws / "shards" / Workspace(ws).manifest().shards[0].parts[0].file
    shard_file.write_bytes(b"damaged")
    result = run_cli("repair", "--workdir", ws, "--data", f"imagefolder:{folder}")
    assert result.code == 0, result.err + result.out
    assert gone not in training_ids(ws) and len(training_ids(ws)) == len(ids) - 1


def test_cli_image_size_flag_errors(folder, tmp_path):
    result = run_cli("train", "--data", f"imagefolder:{folder}", "--workdir", tmp_path / "ws",
                     "--image-size", "0x8")
    assert result.code == 2 and "--image-size" in result.err
    result = run_cli("train", "--data", "digits", "--workdir", tmp_path / "ws", "--image-size", "8")
    assert result.code == 1 and "applies to imagefolder: data only" in result.err
    assert not (tmp_path / "ws").exists()


def test_sisa_add_takes_new_images_in_the_workspaces_channels_and_size(folder, tmp_path):
    ws = tmp_path / "ws"
    assert run_cli("train", "--data", f"imagefolder:{folder}", "--workdir", ws, "--shards", "2", "--slices", "2",
                   "--epochs", "1", "--model", "logreg", "--executor", "local").code == 0
    more = tmp_path / "more"
    (more / "cat").mkdir(parents=True)  # one class only, RGB and 16x16: read as the workspace's 1x8x8
    for n in range(20, 26):
        Image.fromarray(np.stack([pattern(0, n, 16, 16)] * 3, -1)).save(more / "cat" / f"{n:03d}.png")
    added = run_cli("add", "--workdir", ws, "--data", f"imagefolder:{more}", "--executor", "local", "--json")
    assert added.code == 0, added.err
    assert added.json["rows"] == 6 and "cat/020.png" in training_ids(ws)
    again = run_cli("add", "--workdir", ws, "--data", f"imagefolder:{folder}", "--executor", "local")
    assert again.code == 1 and "already in the workspace" in again.err
    assert run_cli("delete", "--workdir", ws, "--ids", "cat/021.png", "--executor", "local").code == 0
    assert run_cli("audit", "--workdir", ws, "--replay").code == 0
