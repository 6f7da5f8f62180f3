"""TaskSet validation, generators and the .npz schema."""
import numpy as np
import pytest

from ntk_bridge.errors import UserError
from ntk_bridge.tasks import TaskSet, load_tasks
from ntk_bridge.families import linear_tasks, sinusoid_tasks, subspace_tasks


@pytest.mark.parametrize("gen", [subspace_tasks, linear_tasks, sinusoid_tasks])
def test_generators_shapes_sphere_and_determinism(gen):
    t = gen(seed=4, n_train=3, n_test=2, n_support=4, n_query=5)
    L = t.layout
    assert (L.n_train, L.n_support, L.n_query, L.n_test, L.m_support, L.m_query) == (3, 4, 5, 2, 4, 5)
    np.testing.assert_allclose(np.sum(t.all_points() ** 2, axis=1), t.dim, rtol=1e-12)
    again = gen(seed=4, n_train=3, n_test=2, n_support=4, n_query=5)
    assert t.fingerprint() == again.fingerprint()
    assert gen(seed=5, n_train=3, n_test=2, n_support=4, n_query=5).fingerprint() != t.fingerprint()


def test_subspace_tasks_share_a_low_rank_structure():
    t = subspace_tasks(seed=0, n_train=30, n_test=1, n_support=40, n_query=40, dim=12, rank=2)
    # least-squares teacher of each task lies in a common 2-d subspace
    ws = np.stack([np.linalg.lstsq(t.train_support_x[i], t.train_support_y[i, :, 0], rcond=None)[0]
                   for i in range(30)])
    s = np.linalg.svd(ws, compute_uv=False)
    assert s[2] < 1e-8 * s[0]
    assert np.var(t.train_query_y) == pytest.approx(1.0, rel=0.5)


def test_sinusoid_zero_predictor_mse():
    t = sinusoid_tasks(seed=0, n_train=2000, n_test=1, n_support=5, n_query=10)
    assert np.mean(t.train_query_y ** 2) == pytest.approx(4.25, rel=0.05)


def test_npz_round_trip(tmp_path):
    t = subspace_tasks(seed=1, n_train=2, n_test=2, n_support=2, n_query=3, dim=4)
    t.save(tmp_path / "t.npz")
    back = load_tasks(tmp_path / "t.npz")
    assert back.fingerprint() == t.fingerprint()
    # test_query_y is optional
    arrays = {k: v for k, v in t.arrays().items() if k != "test_query_y"}
    np.savez(tmp_path / "u.npz", **arrays)
    assert load_tasks(tmp_path / "u.npz").test_query_y is None
    # labels given as [tasks, points] are read as k = 1
    arrays = {k: (v[..., 0] if k.endswith("_y") else v) for k, v in t.arrays().items()}
    np.savez(tmp_path / "v.npz", **arrays)
    assert load_tasks(tmp_path / "v.npz").fingerprint() == t.fingerprint()


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tasks(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a .npz file") as info:
        load_tasks(tmp_path / "junk.npz")
    assert "pickle" not in str(info.value)  # never advise loading a pickle
    t = subspace_tasks(seed=1, n_train=2, n_test=2, n_support=2, n_query=3, dim=4)
    arrays = t.arrays()
    del arrays["train_query_y"]
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(UserError, match="train_query_y"):
        load_tasks(tmp_path / "m.npz")


def _arrays():
    return subspace_tasks(seed=2, n_train=3, n_test=2, n_support=2, n_query=3, dim=4).arrays()


@pytest.mark.parametrize("mutate, word", [
    (lambda a: a.update(train_query_x=a["train_query_x"][:2]), "train_query_x"),  # task count
    (lambda a: a.update(train_support_y=a["train_support_y"][:, :1]), "train_support_y"),  # points
    (lambda a: a.update(test_query_x=a["test_query_x"][..., :3]), "test_query_x"),  # dim
    (lambda a: a.update(test_support_y=np.concatenate([a["test_support_y"]] * 2, -1)), "test_support_y"),
    (lambda a: a["train_support_x"].__setitem__((0, 0, 0), np.nan), "train_support_x"),
    (lambda a: a.update(test_support_x=a["test_support_x"][0]), "test_support_x"),  # rank
])
def test_validation_names_the_offending_argument(mutate, word):
    a = _arrays()
    mutate(a)
    with pytest.raises(ValueError, match=word):
        TaskSet(**a)


def test_common_family_shares_a_teacher():
    from ntk_bridge.families import common_tasks

    t = common_tasks(seed=3, n_train=4, n_test=3, n_support=50, n_query=50, dim=6, shared=1.0)
    np.testing.assert_allclose(np.sum(t.train_support_x ** 2, axis=-1), 6.0)
    # with shared = 1 every task is the same function: fit it on one task, it explains another
    X, Y = t.train_support_x[0], np.arctanh(t.train_support_y[0])
    w = np.linalg.lstsq(X, Y, rcond=None)[0]
    np.testing.assert_allclose(np.tanh(t.test_query_x[2] @ w), t.test_query_y[2], atol=1e-10)
    other = common_tasks(seed=3, n_train=4, n_test=3, n_support=50, n_query=50, dim=6, shared=0.0)
    w0 = np.linalg.lstsq(other.train_support_x[0], np.arctanh(other.train_support_y[0]), rcond=None)[0]
    assert np.abs(np.tanh(other.test_query_x[2] @ w0) - other.test_query_y[2]).max() > 0.1


def test_kanji_family_is_episodes_of_disjoint_classes_on_the_sphere(tmp_path, monkeypatch):
    from ntk_bridge.families import kanji_tasks

    monkeypatch.setenv("NTK_BRIDGE_CACHE", str(tmp_path))
    t = kanji_tasks(seed=0, n_train=3, n_test=2, n_support=5, n_query=10, dim=49, max_classes=30)
    lay = t.layout
    assert (lay.n_train, lay.n_support, lay.n_query, lay.n_test) == (3, 5, 10, 2) and t.dim == 49
    assert t.n_outputs == 5
    np.testing.assert_allclose(np.sum(t.train_query_x ** 2, axis=-1), 49.0)
    # centred one-hot labels: 1 - 1/5 on the true class, -1/5 elsewhere, two queries per class
    y = t.test_query_y[0]
    np.testing.assert_allclose(y.sum(axis=1), 0.0, atol=1e-12)
    assert sorted(np.argmax(y, axis=1).tolist()) == [c for c in range(5) for _ in range(2)]
    again = kanji_tasks(seed=0, n_train=3, n_test=2, n_support=5, n_query=10, dim=49, max_classes=30)
    assert again.fingerprint() == t.fingerprint()
    assert kanji_tasks(seed=1, n_train=3, n_test=2, n_support=5, n_query=10, dim=49,
                       max_classes=30).fingerprint() != t.fingerprint()
    with pytest.raises(UserError, match="square"):
        kanji_tasks(dim=50, max_classes=30)


def test_kanji_episodes_never_reuse_an_image(tmp_path, monkeypatch):
    """An image in two episodes (under two label assignments) would give contradictory targets."""
    from ntk_bridge.families import _episodes, kanji_tasks

    # 4 classes of 6 images (numbered), episodes of 2 classes x 3 images: 24 images hold 4 episodes
    images = np.arange(4 * 6, dtype=float).reshape(4, 6, 1)
    for seed in range(20):
        sx, qx, _, _ = _episodes(np.random.default_rng(seed), images, 3, 2, 1, 2)
        used = np.concatenate([sx.ravel(), qx.ravel()])
        assert len(set(used.tolist())) == len(used) == 18
        # each episode's classes are distinct and its images belong to them
        assert all(len({int(v) // 6 for v in np.concatenate([sx[t].ravel(), qx[t].ravel()])}) == 2 for t in range(3))
    with pytest.raises(UserError, match="do not fit"):
        _episodes(np.random.default_rng(0), images, 5, 2, 1, 2)
    monkeypatch.setenv("NTK_BRIDGE_CACHE", str(tmp_path))
    t = kanji_tasks(seed=0, n_train=10, n_test=6, n_support=5, n_query=10, dim=49, max_classes=30)
    for x in (np.concatenate([t.train_support_x, t.train_query_x], 1), np.concatenate([t.test_support_x,
                                                                                       t.test_query_x], 1)):
        flat = x.reshape(-1, 49)
        assert len(np.unique(flat.round(12), axis=0)) == len(flat)
