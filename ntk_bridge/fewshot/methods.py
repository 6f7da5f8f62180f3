"""Few-shot methods as objects: training objective, test-time adaptation and what each needs.

Notation: an episode has support ``(X', Y')`` (``ways * shots`` images) and query ``(X, Y)``;
``phi`` is the body, ``(W, b)`` a linear head, ``CE`` the mean softmax cross-entropy.

* :data:`MTL` (first order; Wang, Zhao & Li 2021, Sec. 5). One head row per meta-training class,
  ``W_all [d, C_train]``; the head of episode ``i`` is the rows of its classes,
  ``W_i = W_all[:, classes_i]``. Support and query are merged (no split) and the features are
  L2-normalised and scaled to the sphere of radius ``sqrt(d)`` (so initial logits are O(1)):
  ``loss_i = CE(sqrt(d) phi(Z_i)/||phi(Z_i)|| W_i + b_i, Y_i)``, ``Z_i = [X'_i; X_i]``. At test the
  body is frozen and an L2 logistic regression (sklearn, ``C = 3``) is fit on the unit-normalised
  support features (:mod:`ntk_bridge.fewshot.evaluate`).
* :data:`ANIL` (Raghu et al. 2020). ``tau`` steps of gradient descent with step ``lambda`` on the
  head only, ``w <- w - lambda grad_w CE(phi(X') w, Y')`` from the meta-learned head ``w0``; outer
  loss ``CE(phi(X) w_tau, Y)``, differentiated through the inner loop (second order).
* :data:`MAML` (Finn et al. 2017). The same inner loop on all parameters ``theta``; outer loss
  ``CE(f(X; theta_tau), Y)``, second order.
* :data:`R2D2` (Bertinetto et al. 2019; the ridge head of MetaOptNet, Lee et al. 2019, the
  paper's comparator class). The head of each episode is the ridge regression of the one-hot
  support labels on the support features (a constant feature appended for the bias),
  ``W = argmin ||[phi(X') 1] W - onehot(Y')||^2 + lambda ||W||^2``, in closed form through the
  ``n' x n'`` dual system ``W = A^T (A A^T + lambda I)^-1 onehot(Y')``, ``A = [phi(X') 1]``; query
  logits ``s [phi(X) 1] W``. ``lambda`` and the scale ``s`` are meta-learned (log-parameterised,
  initial ``lambda = 1``, ``s = 10``); the outer loss is differentiated through the solve.
* :data:`PROTONET` (Snell et al. 2017). Class prototypes ``c_k`` = mean support feature of class
  ``k``; logits ``-||phi(x) - c_k||^2``. No head, no inner loop.

Each method is one :class:`FewShotMethod` object in :data:`METHODS`; training
(:mod:`~ntk_bridge.fewshot.train`), evaluation, the command's choices and the report's colours and
labels all read that registry. Their hyper-parameters are :class:`MethodConfig`
(:func:`default_method_config`). Every function here handles one episode; a method's
:meth:`~FewShotMethod.over_episodes` maps one over a meta-batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ntk_bridge import methods as registry
from ntk_bridge.datasets.episodes import sample_episodes
from ntk_bridge.errors import UserError
from ntk_bridge.fewshot import METHOD_NAMES
from ntk_bridge.fewshot.models import FewShotNet, Params, l2_normalize

OPTIMIZERS = ("radam", "adam")
SCHEDULES = ("plateau", "cosine")


# ------------------------------------------------------------------------------------ pieces
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of ``logits [n, ways]`` against integer ``labels [n]``."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of rows whose argmax equals the label."""
    return jnp.mean((jnp.argmax(logits, axis=-1).astype(labels.dtype) == labels).astype(jnp.float32))


def head_rows(head: Params, classes: jax.Array) -> Params:
    """MTL's episode head: columns ``classes [ways]`` of ``W [d, C]`` and ``b [1, C]``."""
    weight, bias = head
    return weight[:, classes], bias[:, classes]


def mtl_features(net: FewShotNet, body: Params, x: jax.Array) -> jax.Array:
    """``sqrt(d) phi(x) / ||phi(x)||``: ``[n, H, W, ch] -> [n, d]``."""
    features = net.features(body, x)
    return jnp.sqrt(jnp.asarray(features.shape[-1], features.dtype)) * l2_normalize(features)


def mtl_loss(net: FewShotNet, params: Params, x: jax.Array, y: jax.Array, classes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """MTL loss and accuracy of one episode whose support and query are merged: ``x [n, H, W, ch]``,
    ``y [n]`` in ``0..ways-1``, ``classes [ways]`` the global class of each label."""
    logits = net.head(head_rows(params["head"], classes), mtl_features(net, params["body"], x))
    return cross_entropy(logits, y), accuracy(logits, y)


def _sgd(params: Params, grads: Params, lr: float) -> Params:
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


def anil_adapt(net: FewShotNet, head: Params, support_features: jax.Array, support_y: jax.Array, lr: float, steps: int) -> Params:
    """``steps`` gradient steps of size ``lr`` on the head, features ``[n', d]`` held fixed.

    Inner loops are Python loops (unrolled when traced): ``steps`` is small, and XLA:CPU ran the
    equivalent ``fori_loop`` 2-4x slower.
    """
    for _ in range(steps):
        head = _sgd(head, jax.grad(lambda h: cross_entropy(net.head(h, support_features), support_y))(head), lr)
    return head


def maml_adapt(net: FewShotNet, params: Params, support_x: jax.Array, support_y: jax.Array, lr: float, steps: int) -> Params:
    """``steps`` gradient steps of size ``lr`` on every parameter (unrolled, as :func:`anil_adapt`)."""
    for _ in range(steps):
        params = _sgd(params, jax.grad(lambda p: cross_entropy(net.apply(p, support_x), support_y))(params), lr)
    return params


def ridge_head(features: jax.Array, labels: jax.Array, ways: int, lam: jax.Array) -> jax.Array:
    """R2D2's closed-form head ``W [d + 1, ways]``: ridge regression of ``onehot(labels)`` on
    ``A = [features 1]`` (``[n', d + 1]``) with penalty ``lam``, via the dual system
    ``W = A^T (A A^T + lam I)^-1 Y`` (``n' x n'``, small for few-shot support sets)."""
    a = append_ones(features)
    targets = jax.nn.one_hot(labels, ways, dtype=a.dtype)
    gram = a @ a.T + lam * jnp.eye(a.shape[0], dtype=a.dtype)
    return a.T @ jnp.linalg.solve(gram, targets)


def append_ones(features: jax.Array) -> jax.Array:
    """``[features 1]``: ``[n, d] -> [n, d + 1]``."""
    return jnp.concatenate([features, jnp.ones((features.shape[0], 1), features.dtype)], axis=1)


def prototype_logits(support_features: jax.Array, support_y: jax.Array, query_features: jax.Array, ways: int) -> jax.Array:
    """ProtoNet logits ``-||q - c_k||^2`` ``[n, ways]``, ``c_k`` the mean support feature of class ``k``."""
    onehot = jax.nn.one_hot(support_y, ways, dtype=support_features.dtype)
    prototypes = (onehot.T @ support_features) / jnp.sum(onehot, axis=0)[:, None]
    return -(jnp.sum(query_features**2, axis=1, keepdims=True) - 2 * query_features @ prototypes.T
             + jnp.sum(prototypes**2, axis=1)[None, :])


# ------------------------------------------------------------------------------ hyper-parameters
@dataclass(frozen=True)
class MethodConfig:
    """Hyper-parameters of one method's run.

    Attributes:
      method: a name in :data:`METHODS`.
      optimizer: ``"radam"`` or ``"adam"`` (optax).
      lr: outer learning rate.
      warmup_steps: linear warm-up of the learning rate from 0 over this many outer steps (0: none).
      schedule: ``"plateau"`` (reduce on plateau, see :mod:`~ntk_bridge.fewshot.train`) or
        ``"cosine"`` (cosine decay to 0 over the run's step cap; plateaus then only stop the run).
      meta_batch: episodes per outer step.
      train_queries: query images per class in training episodes (MTL merges them with the support).
      inner_lr, inner_steps: inner loop during meta-training (ANIL/MAML).
      test_inner_steps: inner steps at test time (ANIL/MAML).
      logistic_c: ``C`` of MTL's test-time logistic regression.
    """

    method: str
    optimizer: str = "adam"
    lr: float = 1e-3
    warmup_steps: int = 0
    schedule: str = "plateau"
    meta_batch: int = 4
    train_queries: int = 7
    inner_lr: float = 0.4
    inner_steps: int = 1
    test_inner_steps: int = 3
    logistic_c: float = 3.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if not (np.isfinite(self.lr) and self.lr > 0) or not (np.isfinite(self.inner_lr) and self.inner_lr >= 0):
            raise UserError(f"{self.method}: learning rates must be finite, lr > 0 and inner_lr >= 0")
        if not (np.isfinite(self.logistic_c) and self.logistic_c > 0):
            raise UserError(f"{self.method}: logistic_c must be a positive number")
        if min(self.meta_batch, self.train_queries + 1) < 1 or min(self.inner_steps, self.test_inner_steps, self.warmup_steps) < 0:
            raise UserError(f"{self.method}: meta_batch >= 1, train_queries >= 0, and step counts >= 0 required")

    @property
    def spec(self) -> "FewShotMethod":
        """The method object this configures."""
        return METHODS[self.method]


def default_method_config(method: str, **overrides: Any) -> MethodConfig:
    """The method's defaults (:attr:`FewShotMethod.defaults`, why each: README, few-shot section),
    with ``overrides``."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return replace(MethodConfig(method, **METHODS[method].defaults), **overrides)


# ------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class FewShotMethod:
    """One few-shot method: how it trains and how it adapts at test time.

    Attributes:
      name: registry key, CLI choice and ``method`` column (stable).
      label: name in tables and figures.
      color: matplotlib colour in figures (the house registry's, :mod:`ntk_bridge.methods`, for the
        methods it shares with it).
      head: linear head rows: ``"classes"`` (one per meta-training class, MTL), ``"ways"`` (one per
        way of an episode, meta-learned initialisation), or ``"none"``.
      inner_loop: what is adapted by gradient steps on the support set: ``"none"``, ``"head"``, ``"all"``.
      closed_form_head: the episode's head is solved in closed form and differentiated through.
      merged: training episodes merge support and query (no split; MTL).
      test_time: ``"logistic_regression"`` (frozen features, sklearn) or ``"own"`` (the method's
        :meth:`query_logits`).
      loop_episodes: map over a meta-batch with a Python loop instead of ``vmap`` (MAML; see
        :meth:`over_episodes`).
      defaults: :class:`MethodConfig` fields that differ from its defaults.
    """

    name: str
    label: str
    color: str
    head: str = "ways"
    inner_loop: str = "none"
    closed_form_head: bool = False
    merged: bool = False
    test_time: str = "own"
    loop_episodes: bool = False
    defaults: dict = field(default_factory=dict)

    @property
    def import_path(self) -> str:
        """Where the object lives, ``"ntk_bridge.fewshot.methods:NAME"`` (``NAME = name.upper()``)."""
        return f"{__name__}:{self.name.upper()}"

    # -- parameters -------------------------------------------------------------------------
    def head_outputs(self, ways: int, n_train_classes: int) -> int:
        """Outputs of the network's linear head (1 when the method has none; it is then dropped)."""
        return {"classes": n_train_classes, "ways": ways, "none": 1}[self.head]

    def init_params(self, net: FewShotNet, key: jax.Array) -> Params:
        """float32 parameters: ``{"body", "head"}``, or ``{"body"}`` plus the method's own."""
        params = net.init(key)
        return params if self.head != "none" else {"body": params["body"]}

    # -- training ---------------------------------------------------------------------------
    def training_batch(self, config: MethodConfig, images: np.ndarray, ways: int, shots: int, rng: np.random.Generator) -> tuple:
        """One meta-batch of training episodes: ``(x, y, classes)`` with support and query merged
        when :attr:`merged`, else ``(support_x, support_y, query_x, query_y)``."""
        if self.merged:
            ep = sample_episodes(images, ways, shots + config.train_queries, 0, config.meta_batch, rng)
            return ep.support_x, ep.support_y, ep.classes
        ep = sample_episodes(images, ways, shots, config.train_queries, config.meta_batch, rng)
        return ep.support_x, ep.support_y, ep.query_x, ep.query_y

    def episode_loss(self, net: FewShotNet, params: Params, config: MethodConfig, ways: int, *episode: jax.Array,
                     ) -> tuple[jax.Array, jax.Array]:
        """Outer loss and accuracy of one training episode (the arrays of one entry of
        :meth:`training_batch`): the query loss after adaptation."""
        support_x, support_y, query_x, query_y = episode
        logits = self.query_logits(net, params, config, support_x, support_y, query_x, ways, training=True)
        return cross_entropy(logits, query_y), accuracy(logits, query_y)

    def over_episodes(self, fn: Callable[..., Any], *batched: jax.Array) -> Any:
        """``fn`` applied to every episode of a batch (leading axis of each array in ``batched``),
        results stacked along a new leading axis.

        ``vmap``, or for :attr:`loop_episodes` (MAML) a Python loop unrolled into the traced graph:
        MAML's adapted convolution weights differ per episode, which ``vmap`` turns into one grouped
        convolution and ``lax.map`` into a while loop; XLA:CPU ran those about 5x and 9x slower than
        the unrolled loop (2.1 s and 3.8 s against 0.41 s per outer step of 4 episodes, Conv-4 with
        32 channels, measured).
        """
        if self.loop_episodes:
            outputs = [fn(*(a[i] for a in batched)) for i in range(batched[0].shape[0])]
            return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outputs)
        return jax.vmap(fn)(*batched)

    # -- adaptation -------------------------------------------------------------------------
    def query_logits(self, net: FewShotNet, params: Params, config: MethodConfig, support_x: jax.Array,
                     support_y: jax.Array, query_x: jax.Array, ways: int, training: bool = False) -> jax.Array:
        """Query logits ``[n, ways]`` after adapting to the support set (labels ``0..ways-1``;
        ``training`` selects the training-time inner loop length)."""
        raise NotImplementedError(f"{self.name} adapts outside JAX (test_time={self.test_time!r})")


@dataclass(frozen=True)
class _MultiTask(FewShotMethod):
    def episode_loss(self, net, params, config, ways, *episode):
        return mtl_loss(net, params, *episode)


@dataclass(frozen=True)
class _HeadInnerLoop(FewShotMethod):
    def query_logits(self, net, params, config, support_x, support_y, query_x, ways, training=False):
        steps = config.inner_steps if training else config.test_inner_steps
        head = anil_adapt(net, params["head"], net.features(params["body"], support_x), support_y, config.inner_lr, steps)
        return net.head(head, net.features(params["body"], query_x))


@dataclass(frozen=True)
class _FullInnerLoop(FewShotMethod):
    def query_logits(self, net, params, config, support_x, support_y, query_x, ways, training=False):
        steps = config.inner_steps if training else config.test_inner_steps
        return net.apply(maml_adapt(net, params, support_x, support_y, config.inner_lr, steps), query_x)


@dataclass(frozen=True)
class _Ridge(FewShotMethod):
    #: Initial ridge penalty and logit scale.
    init_lambda: float = 1.0
    init_scale: float = 10.0

    def init_params(self, net, key):
        return {"body": net.init(key)["body"],
                "ridge": {"log_lambda": jnp.asarray(np.log(self.init_lambda), jnp.float32),
                          "log_scale": jnp.asarray(np.log(self.init_scale), jnp.float32)}}

    def query_logits(self, net, params, config, support_x, support_y, query_x, ways, training=False):
        weight = ridge_head(net.features(params["body"], support_x), support_y, ways, jnp.exp(params["ridge"]["log_lambda"]))
        return jnp.exp(params["ridge"]["log_scale"]) * (append_ones(net.features(params["body"], query_x)) @ weight)


@dataclass(frozen=True)
class _Prototypes(FewShotMethod):
    def query_logits(self, net, params, config, support_x, support_y, query_x, ways, training=False):
        return prototype_logits(net.features(params["body"], support_x), support_y,
                                net.features(params["body"], query_x), ways)


MTL = _MultiTask(
    "mtl", "MTL", registry.MTL.color, head="classes", merged=True, test_time="logistic_regression",
    defaults=dict(optimizer="adam", meta_batch=8, train_queries=3))
ANIL = _HeadInnerLoop("anil", "ANIL", registry.ANIL.color, inner_loop="head",
                      defaults=dict(optimizer="adam", inner_steps=5, test_inner_steps=10))
MAML = _FullInnerLoop("maml", "MAML", registry.MAML.color, inner_loop="all", loop_episodes=True,
                      defaults=dict(optimizer="adam", inner_steps=1, test_inner_steps=1))
R2D2 = _Ridge("r2d2", "R2D2", "tab:brown", head="none", closed_form_head=True, defaults=dict(optimizer="adam"))
PROTONET = _Prototypes("protonet", "ProtoNet", "tab:cyan", head="none", defaults=dict(optimizer="adam"))

#: Every method, by name (the order of the CLI's choices and of reports).
METHODS: dict[str, FewShotMethod] = {m.name: m for m in (MTL, ANIL, MAML, R2D2, PROTONET)}
assert tuple(METHODS) == METHOD_NAMES, "ntk_bridge.fewshot.METHOD_NAMES must list the registry's names"
assert all(globals()[m.name.upper()] is m for m in METHODS.values())
