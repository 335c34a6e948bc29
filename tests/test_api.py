import numpy as np
import pytest
from conftest import run_cli, tree

import sisa
from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.estimator import SISAClassifier
from sisa.workspace.files import Workspace


@pytest.mark.numerics
def test_fit_predict_load_round_trip(tmp_path):
    ds = load("digits")
    clf = SISAClassifier(tmp_path, shards=3, slices=2, epochs=4).fit(ds)
    assert clf.fit is not None and list(clf.classes_) == list(range(10))
    proba = clf.predict_proba(ds.test.X)
    assert proba.shape == (len(ds.test), 10) and np.allclose(proba.sum(1), 1)
    assert clf.score(ds.test.X, ds.test.y) > 0.8
    again = SISAClassifier.load(tmp_path)
    assert np.array_equal(again.predict_proba(ds.test.X), proba)
    assert again.settings == clf.settings
    forget = [int(i) for i in ds.train.ids[:5]]
    result = again.delete(forget)
    assert sorted(result["deleted"]) == forget and result["retrained"]
    assert not np.array_equal(again.predict_proba(ds.test.X), proba)


@pytest.mark.numerics
def test_fit_on_arrays_with_string_ids_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(-2, 1, (60, 3)), rng.normal(2, 1, (60, 3))]).astype(np.float32)
    y = np.array(["no"] * 60 + ["yes"] * 60)
    ids = np.array([f"row{i}" for i in range(120)], dtype=object)
    clf = SISAClassifier(tmp_path, shards=2, slices=2, epochs=10, lr=0.01).fit(X, y, ids=ids)
    assert list(clf.classes_) == ["no", "yes"]
    assert clf.score(X, y) > 0.9
    assert set(clf.predict(X[:5])) <= {"no", "yes"}


def test_api_errors():
    with pytest.raises(SisaError, match="not fitted"):
        SISAClassifier("nowhere").predict(np.zeros((1, 3)))
    with pytest.raises(SisaError, match="X has 3 rows but y has 2"):
        SISAClassifier("nowhere").fit(np.zeros((3, 2)), [0, 1])
    with pytest.raises(SisaError, match="unknown model"):
        SISAClassifier("nowhere", model="nope")


def test_a_failed_checkpoint_write_leaves_no_partial_workspace(tmp_path, monkeypatch):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "README.md").write_text("kept\n")
    before = tree(tmp_path)
    calls = {"n": 0}
    real = Workspace.write_checkpoint

    def full_disk(self, name, state):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, name, state)

    monkeypatch.setattr(Workspace, "write_checkpoint", full_disk)
    result = run_cli("train", "--workdir", tmp_path, "--epochs", "1", "--shards", "2", "--slices", "2")
    assert result.code == 1 and "No space left on device" in result.err
    assert tree(tmp_path) == before
    monkeypatch.undo()
    assert run_cli("train", "--workdir", tmp_path, "--epochs", "1", "--shards", "2", "--slices", "2").code == 0


def test_version():
    assert sisa.__version__
