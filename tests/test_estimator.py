"""SISAClassifier, the scikit-learn style Python API: fit, predict, load and delete."""

import gc
import pickle
import re
import shutil
import tempfile
import warnings

import numpy as np
import pytest
from helpers import run_cli, training_ids, tree
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import sisa
from sisa.data.sources import load
from sisa.errors import SisaError
from sisa.estimator import SETTINGS, SISAClassifier, SmallSlicesWarning
from sisa.settings import Settings
from sisa.workspace.files import Workspace


@pytest.mark.numerics
def test_fit_predict_load_round_trip(tmp_path):
    ds = load("digits")
    clf = SISAClassifier(tmp_path, shards=3, slices=2, epochs=4)
    assert clf.fit(ds) is clf  # fit returns the estimator itself, as scikit-learn's do
    assert list(clf.classes_) == list(range(10)) and clf.n_features_in_ == ds.train.X.shape[1]
    assert not hasattr(clf, "dataset_")  # the estimator (and its pickles) keep no training rows
    assert Workspace(clf.workdir_).manifest().settings == clf.settings
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


def test_api_errors(tmp_path):
    with pytest.raises(NotFittedError, match="not fitted"):
        SISAClassifier(tmp_path / "nowhere").predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="inconsistent numbers of samples: \\[3, 2\\]"):
        SISAClassifier(tmp_path / "nowhere").fit(np.zeros((3, 2)), [0, 1])
    clf = SISAClassifier(tmp_path / "nowhere", model="nope")  # scikit-learn's rule: __init__ only stores
    with pytest.raises(SisaError, match="unknown model"):
        clf.fit(np.zeros((10, 2)), np.arange(10) % 2)
    assert not (tmp_path / "nowhere").exists()


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
    with pytest.raises(SisaError, match="ledger holds 3 deleted id\\(s\\).* pass ids=..."):
        clf.fit(X, y)  # row numbers name other people in new data
    clf.fit(X, y, ids=np.arange(120))
    assert clf.summary_["excluded_deleted"] == 3
    assert not {0, 1, 2} & set(training_ids(tmp_path / "ws"))


@pytest.mark.parametrize("X, y, message", [
    (np.r_[np.full((1, 3), np.nan), np.ones((39, 3))], np.arange(40) % 2, "Input X contains NaN"),
    (np.r_[np.full((1, 3), np.inf), np.ones((39, 3))], np.arange(40) % 2, "Input X contains infinity"),
    (np.full((40, 3), 3.4e39), np.arange(40) % 2, "float32"),
    (np.ones((40, 3)), np.linspace(0, 1, 40), "Unknown label type: continuous"),
    (np.ones((40, 3)), np.r_[np.inf, np.zeros(39)], "Input y contains infinity"),
    (np.ones((40, 3)), np.r_[1e30, np.zeros(39)], "Unknown label type"),
    (np.ones(40), np.arange(40) % 2, "Expected 2D array"),
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


# -- a real scikit-learn estimator (issue 17)

CHECK_PARAMS = {"shards": 2, "slices": 2, "epochs": 10}
EXPECTED_FAILED_CHECKS: dict[str, str] = {}
"""scikit-learn's estimator checks that SISAClassifier fails on purpose, with the reason (none now:
it takes no sample weights, so the sample-weight checks do not apply and are not run)."""


@parametrize_with_checks([SISAClassifier(**CHECK_PARAMS)], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_the_parameters_default_to_the_settings_defaults():
    """The estimator's keyword defaults are written out (scikit-learn reads them from the
    signature); they must stay those of Settings."""
    params = SISAClassifier().get_params()
    assert {name: params[name] for name in SETTINGS} == Settings().to_dict()
    assert params["workdir"] is None and params["executor"] == "local" and params["keep_workdir"] is False


def test_bad_parameters_are_refused_by_fit_not_init(tmp_path):
    clf = SISAClassifier(shards=0, lr=-1)
    assert clf.get_params()["shards"] == 0  # stored as given
    with pytest.raises(ValueError, match="shards must be a positive integer"):
        clf.fit(np.ones((10, 2)), np.arange(10) % 2)
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        SISAClassifier(executor="dask").fit(np.ones((10, 2)), np.arange(10) % 2)
    # numpy scalars, as parameter grids give them, are settings like Python's
    clf = SISAClassifier(shards=np.int64(2), slices=np.int32(1), epochs=1, lr=np.float64(0.01))
    assert clf.fit(np.ones((10, 2)), np.arange(10) % 2).summary_["shards"] == 2


def _blobs(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = np.r_[rng.normal(-2, 1, (n // 2, 3)), rng.normal(2, 1, (n // 2, 3))]
    return X, np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]


def test_a_temporary_workspace_per_fit_removed_with_the_estimator():
    X, y = _blobs()
    clf = SISAClassifier(shards=2, slices=1, epochs=2)
    first = clf.fit(X, y).workdir_
    assert (first / "shards" / "manifest.json").exists()
    second = clf.fit(X, y).workdir_  # a refit: a new workspace, the old one removed
    assert second != first and not first.exists() and second.exists()
    del clf
    gc.collect()
    assert not second.exists()
    kept = SISAClassifier(shards=2, slices=1, epochs=2, keep_workdir=True).fit(X, y).workdir_
    gc.collect()
    try:
        assert (kept / "shards" / "manifest.json").exists()
    finally:
        shutil.rmtree(kept)


def test_a_failed_fit_leaves_no_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    X, y = _blobs()
    with pytest.raises(ValueError, match="n_samples=1 is fewer than shards=2"):
        SISAClassifier(shards=2).fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="more slices than samples"):
        SISAClassifier(shards=2, slices=50).fit(X, y)
    assert list(tmp_path.iterdir()) == []


def test_refit_and_a_workdir_it_did_not_train(tmp_path):
    X, y = _blobs()
    clf = SISAClassifier(tmp_path / "ws", shards=2, slices=1, epochs=2).fit(X, y)
    clf.fit(X[:60], y[:60])  # its own workspace: refit replaces it
    assert clf.summary_["n_train"] + clf.summary_.get("n_test", 0) <= 60
    before = tree(tmp_path)
    other = clone(clf)
    with pytest.raises(SisaError, match="did not train; fit\\(..., force=True\\) replaces it"):
        other.fit(X, y)
    assert tree(tmp_path) == before
    clf.delete([0, 1])
    with pytest.warns(UserWarning, match="2 row\\(s\\) were left out: their ids were deleted earlier"):
        other.fit(X, y, ids=np.arange(len(X)), force=True)
    loaded = SISAClassifier.load(tmp_path / "ws")  # loading does not make a workspace the estimator's
    with pytest.raises(SisaError, match="did not train"):
        loaded.fit(X, y, ids=np.arange(len(X)))
    assert not {0, 1} & set(training_ids(tmp_path / "ws"))


def test_clone_get_params_and_set_params():
    clf = SISAClassifier(shards=3, lr=0.01)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params() and copy is not clf
    assert copy.set_params(shards=4, model="logreg") is copy and copy.shards == 4 and clf.shards == 3
    fitted = SISAClassifier(shards=2, slices=1, epochs=1).fit(*_blobs())
    assert not hasattr(clone(fitted), "workdir_")  # a clone is unfitted


def test_feature_names_and_n_features_are_checked(tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = _blobs()
    frame = pd.DataFrame(X, columns=["age", "income", "visits"])
    clf = SISAClassifier(tmp_path / "ws", shards=2, slices=1, epochs=2).fit(frame, y)
    assert list(clf.feature_names_in_) == ["age", "income", "visits"] and clf.n_features_in_ == 3
    assert Workspace(tmp_path / "ws").manifest().data.feature_names == ("age", "income", "visits")
    with pytest.raises(ValueError, match="X has 2 features, but SISAClassifier is expecting 3"):
        clf.predict(X[:, :2])
    with pytest.raises(ValueError, match="Feature names unseen at fit time"):
        clf.predict(frame.rename(columns={"age": "years"}))
    assert np.array_equal(clf.predict(frame), clf.predict(X.astype(np.float32)))


@pytest.mark.numerics
def test_pickles_predict_alike_and_a_temporary_ones_outlive_the_original(tmp_path):
    X, y = _blobs()
    clf = SISAClassifier(shards=2, slices=2, epochs=3).fit(X, y)
    proba, folder = clf.predict_proba(X), clf.workdir_
    copy = pickle.loads(pickle.dumps(clf))
    del clf
    gc.collect()
    assert not folder.exists()
    assert np.array_equal(copy.predict_proba(X), proba)  # the shard models travelled, not the rows
    with pytest.raises(SisaError, match="copy \\(unpickled\\) of one that trained in a temporary workspace"):
        copy.delete([0])
    # a workspace of the user's: the copy reads the workspace, so it sees deletions made later
    kept = SISAClassifier(tmp_path / "ws", shards=2, slices=2, epochs=3).fit(X, y)
    copy = pickle.loads(pickle.dumps(kept))
    kept.delete(list(range(10)))
    assert np.array_equal(copy.predict_proba(X), kept.predict_proba(X))


def test_a_pickle_holds_no_training_rows():
    X, y = _blobs()
    X[:, 0] = 123456.789  # a value that would show in the bytes if rows were pickled
    data = pickle.dumps(SISAClassifier(shards=2, slices=1, epochs=1).fit(X, y))
    assert np.float64(123456.789).tobytes() not in data and np.float32(123456.789).tobytes() not in data


@pytest.mark.numerics
def test_pipeline_and_grid_search(tmp_path):
    """The README's example: a scaler and SISA in a Pipeline, tuned with GridSearchCV (each
    fit in a temporary workspace), then the best model kept in a workspace to delete from."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = X[:600], y[:600]
    pipe = make_pipeline(MinMaxScaler(), SISAClassifier(shards=2, slices=2, epochs=20))
    search = GridSearchCV(pipe, {"sisaclassifier__model": ["logreg", "mlp"]}, cv=2).fit(X, y)
    assert search.best_score_ > 0.8 and set(search.cv_results_["param_sisaclassifier__model"]) == {"logreg", "mlp"}
    assert cross_val_score(search.best_estimator_, X, y, cv=2).mean() > 0.8
    user_ids = [f"user-{i}" for i in range(len(X))]
    best = clone(search.best_estimator_).set_params(sisaclassifier__workdir=tmp_path / "ws")
    best.fit(X, y, sisaclassifier__ids=user_ids)
    before = best.predict_proba(X[:50])
    best[-1].delete(["user-3", "user-4"])
    assert not np.array_equal(best.predict_proba(X[:50]), before)
    assert SISAClassifier.load(tmp_path / "ws").get_params()["model"] == search.best_params_["sisaclassifier__model"]


def test_fit_warns_when_slices_are_smaller_than_a_batch():
    X, y = _blobs(80)
    with pytest.warns(SmallSlicesWarning, match="slices of .* rows are smaller than one batch \\(32 rows\\)"):
        SISAClassifier(shards=2, slices=4, epochs=1).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallSlicesWarning)
        SISAClassifier(shards=2, slices=1, epochs=1, batch_size=8).fit(X, y)


def test_a_relative_workdir_stays_the_workspace_it_named(tmp_path, monkeypatch):
    X, y = _blobs()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = SISAClassifier("ws", shards=2, slices=1, epochs=1).fit(X, y)
    monkeypatch.chdir(tmp_path / "b")
    second = SISAClassifier("ws", shards=2, slices=1, epochs=1, seed=1).fit(X, y)
    first.delete([3])
    assert 3 not in set(training_ids(tmp_path / "a" / "ws")) and 3 in set(training_ids(tmp_path / "b" / "ws"))
    with pytest.raises(SisaError, match="did not train"):
        first.set_params(workdir="ws").fit(X, y, ids=np.arange(len(X)))  # b/ws is the other's
    assert second.predict(X[:3]).shape == (3,)


def test_an_estimator_sees_what_another_process_changed(tmp_path):
    X, y = _blobs()
    clf = SISAClassifier(tmp_path / "ws", shards=2, slices=2, epochs=2).fit(X, y)
    loaded = SISAClassifier.load(tmp_path / "ws")
    loaded.predict_proba(X)
    assert run_cli("delete", "--workdir", tmp_path / "ws", "--ids", "0,1,2,3,4,5").code == 0
    assert np.array_equal(loaded.predict_proba(X), clf.predict_proba(X))  # both read the workspace anew


def test_load_checks_a_tables_column_names(tmp_path):
    pd = pytest.importorskip("pandas")
    X, y = _blobs()
    frame = pd.DataFrame(X, columns=["age", "income", "visits"])
    SISAClassifier(tmp_path / "ws", shards=2, slices=1, epochs=2).fit(frame, y)
    loaded = SISAClassifier.load(tmp_path / "ws")
    assert list(loaded.feature_names_in_) == ["age", "income", "visits"]
    with pytest.raises(ValueError, match="feature names should match"):
        loaded.predict(frame[["visits", "income", "age"]])
