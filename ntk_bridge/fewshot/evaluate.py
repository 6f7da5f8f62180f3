"""Test-time adaptation and few-shot accuracy over episodes.

Each method predicts the query labels of an episode from its support set, as its object in
:data:`ntk_bridge.fewshot.methods.METHODS` says (``test_time``):

* ``"logistic_regression"`` (MTL): frozen body; features L2-normalised to unit norm; an
  L2-regularised multinomial logistic regression (``sklearn.linear_model.LogisticRegression(C=3)``,
  the paper's test-time head) fit on the support features;
* ``"own"``: the method's :meth:`~ntk_bridge.fewshot.methods.FewShotMethod.query_logits` (ANIL's and
  MAML's inner loop with ``test_inner_steps`` steps, R2D2's ridge head, ProtoNet's prototypes);
* ``nn-pixels``: the raw-pixel baseline, 1-nearest neighbour in cosine similarity over all support
  images (the "Pixels / cosine" baseline of Vinyals et al. 2016).

An episode whose features or logits are not all finite scores NaN (the run's status becomes
``nonfinite``). Accuracy is reported as the mean over episodes and the half-width of the normal 95%
interval, ``1.96 * std(acc_e, ddof=1) / sqrt(E)``.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from ntk_bridge.datasets.episodes import Episodes
from ntk_bridge.fewshot.methods import MethodConfig, accuracy
from ntk_bridge.fewshot.models import FewShotNet, Params
from ntk_bridge.results import mean_ci95

BASELINE = "nn-pixels"


def unit_rows(a: np.ndarray) -> np.ndarray:
    """Rows of ``a`` divided by their Euclidean norms (zero rows stay zero)."""
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.maximum(norms, 1e-12)


def logistic_regression_predict(
    support_features: np.ndarray, support_y: np.ndarray, query_features: np.ndarray, c: float = 3.0
) -> np.ndarray:
    """Query labels ``[n]`` from an L2 logistic regression on unit-normalised support features ``[n', d]``."""
    model = LogisticRegression(C=c, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(unit_rows(support_features), support_y)
    return model.predict(unit_rows(query_features))


def nearest_neighbour_accuracies(episodes: Episodes) -> np.ndarray:
    """Per-episode accuracy ``[E]`` of 1-NN in cosine similarity on raw pixels."""
    n_ep = episodes.n_episodes
    support = unit_rows(episodes.support_x.reshape(n_ep, episodes.support_x.shape[1], -1))
    query = unit_rows(episodes.query_x.reshape(n_ep, episodes.query_x.shape[1], -1))
    nearest = np.argmax(np.einsum("eqd,esd->eqs", query, support), axis=-1)
    predicted = np.take_along_axis(episodes.support_y, nearest, axis=1)
    return np.mean(predicted == episodes.query_y, axis=1)


@functools.lru_cache(maxsize=32)
def episode_scorer(net: FewShotNet, config: MethodConfig) -> Callable[[Params, Episodes], np.ndarray]:
    """A function ``(params, episodes) -> per-episode query accuracy [E]`` (NaN where outputs are
    not finite), for the method ``config.method`` with its test-time settings.

    Cached per ``(net, config)`` so that validation and test share one set of compiled functions.
    """
    method = config.spec
    if method.test_time == "logistic_regression":
        features = jax.jit(net.features)

        def score_features(params: Params, episodes: Episodes) -> np.ndarray:
            n_ep, n_s = episodes.support_y.shape
            images = np.concatenate([episodes.support_x, episodes.query_x], axis=1)
            flat = np.asarray(features(params["body"], images.reshape(-1, *images.shape[2:])))
            flat = flat.reshape(n_ep, images.shape[1], -1)
            scores = []
            for e in range(n_ep):
                if not np.all(np.isfinite(flat[e])):
                    scores.append(np.nan)
                    continue
                predicted = logistic_regression_predict(flat[e, :n_s], episodes.support_y[e], flat[e, n_s:], config.logistic_c)
                scores.append(np.mean(predicted == episodes.query_y[e]))
            return np.asarray(scores)

        return score_features

    def correct(params, support_x, support_y, query_x, query_y, ways):
        logits = method.query_logits(net, params, config, support_x, support_y, query_x, ways)
        return jnp.where(jnp.all(jnp.isfinite(logits)), accuracy(logits, query_y), jnp.nan)

    if method.loop_episodes:  # one jitted episode at a time (see FewShotMethod.over_episodes)
        single = jax.jit(correct, static_argnums=5)

        def batched(params, ways, *arrays):
            return np.array([single(params, *(a[i] for a in arrays), ways) for i in range(arrays[0].shape[0])])
    else:
        batched = jax.jit(lambda params, ways, *arrays: jax.vmap(lambda *a: correct(params, *a, ways))(*arrays),
                          static_argnums=1)

    def score_own(params: Params, episodes: Episodes) -> np.ndarray:
        return np.asarray(batched(params, episodes.classes.shape[1], episodes.support_x, episodes.support_y,
                                  episodes.query_x, episodes.query_y), np.float64)

    return score_own


def accuracies(score: Callable[[Params, Episodes], np.ndarray], params: Params, episodes: Iterable[Episodes]) -> np.ndarray:
    """Per-episode accuracies ``[E]`` over a stream of episode batches."""
    return np.concatenate([score(params, batch) for batch in episodes])
