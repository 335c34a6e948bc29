"""SISAClassifier, the scikit-learn style Python API: fit, predict, load and delete."""

import re

import numpy as np
import pytest
from helpers import run_cli, training_ids, tree

import sisa
from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.estimator import SISAClassifier
from sisa.workspace.files import Workspace


@pytest.mark.numerics
def test_fit_predict_load_round_trip(tmp_path):
    ds = load("digits")
    clf = SISAClassifier(tmp_path, shards=3, slices=2, epochs=4)
    assert clf.fit(ds) is clf  # fit returns the estimator itself, as scikit-learn's do
    assert list(clf.classes_) == list(range(10)) and clf.dataset_ is ds
    assert clf.ensemble_.settings == clf.settings
    assert clf.summary_["n_train"] == len(ds.train) and clf.summary_["excluded_deleted"] == 0
    assert (clf.summary_["shards"], clf.summary_["slices"]) == (3, 2)
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

    def full_disk(self, name, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return real(self, name, data)

    monkeypatch.setattr(Workspace, "write_checkpoint", full_disk)
    result = run_cli("train", "--workdir", tmp_path, "--epochs", "1", "--shards", "2", "--slices", "2")
    assert result.code == 1 and "No space left on device" in result.err
    assert tree(tmp_path) == before
    monkeypatch.undo()
    assert run_cli("train", "--workdir", tmp_path, "--epochs", "1", "--shards", "2", "--slices", "2").code == 0


def test_version():
    """A release number in PEP 440's form (a workspace records it; see workspace/test_manifest.py)."""
    assert re.fullmatch(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", sisa.__version__)


# -- the Python API honours the ledger and refuses what the CLI refuses (issue 13)

def test_the_python_api_honours_the_ledger_on_refit(tmp_path):
    X = np.random.default_rng(0).normal(size=(120, 4)).astype(np.float32)
    y = np.arange(120) % 2
    clf = SISAClassifier(tmp_path / "ws", shards=2, slices=2, epochs=1).fit(X, y)
    clf.delete([0, 1, 2])
    clf.fit(X, y, force=True)
    assert clf.summary_["excluded_deleted"] == 3
    assert not {0, 1, 2} & set(training_ids(tmp_path / "ws"))


@pytest.mark.parametrize("X, y, message", [
    (np.r_[np.full((1, 3), np.nan), np.ones((39, 3))], np.arange(40) % 2, "NaN or infinite"),
    (np.r_[np.full((1, 3), np.inf), np.ones((39, 3))], np.arange(40) % 2, "NaN or infinite"),
    (np.full((40, 3), 3.4e39), np.arange(40) % 2, "float32"),
    (np.ones((40, 3)), np.linspace(0, 1, 40), "non-integer"),
    (np.ones((40, 3)), np.r_[np.inf, np.zeros(39)], "infinite labels"),
    (np.ones((40, 3)), np.r_[1e30, np.zeros(39)], "beyond 2\\^53"),
    (np.ones(40), np.arange(40) % 2, "2-D"),
])
def test_fit_refuses_bad_arrays_with_a_value_error(tmp_path, X, y, message):
    with pytest.raises(ValueError, match=message):
        SISAClassifier(tmp_path / "ws", shards=2, slices=1, epochs=1).fit(X, y)
    assert not (tmp_path / "ws" / "shards" / "manifest.json").exists()


def test_the_python_api_adds_reverts_and_keeps_history(tmp_path):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    clf = SISAClassifier(tmp_path / "ws", shards=2, slices=2, epochs=2, model="logreg").fit(X[:1000], y[:1000])
    added = clf.add(X[1000:1200], y[1000:1200], ids=np.arange(1000, 1200))
    assert added["version"] == 2 and added["rows"] == 200
    with pytest.raises(SisaError, match="already in the workspace"):
        clf.add(X[1000:1010], y[1000:1010], ids=np.arange(1000, 1010))
    deleted = clf.delete([5, 1100], reference="T-1")
    assert deleted["request"] == 1
    assert clf.receipt(1)["audit"]["ok"]
    assert clf.revert(1)["reverted"] == [2]
    kinds = [(e["event"], e.get("kind") or e.get("reference")) for e in clf.history()]
    assert kinds == [("version", "train"), ("version", "add"), ("request", "T-1"), ("version", "revert")]
    assert clf.predict(X[1500:1510]).shape == (10,)
