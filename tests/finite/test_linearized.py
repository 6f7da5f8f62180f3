"""Rung 2 of docs/theory.md §5: closed forms with empirical kernels == gradient descent on the linearised
network, in discrete time, for MTL, ANIL and MAML (full-f0 form, one network).

The training loops below are written the plain way: parameters as pytrees, ``jax.grad`` of the
sum-of-squares loss, the inner loops unrolled and differentiated (second order). Nothing is shared
with ``ntk_bridge.predictors`` except the configuration of times and steps.
"""
import functools

import jax
import jax.numpy as jnp
import neural_tangents as nt
import numpy as np
import pytest

from ntk_bridge.kernels import Architecture
from ntk_bridge.predictors import PredictorConfig, predict_from_kernels
from ntk_bridge.families import subspace_tasks


TOL = 1e-8
OUTER_STEPS, INNER_STEPS, FINETUNE_STEPS = 25, 4, 3


def sq(f, y):
    return 0.5 * jnp.sum((f - y) ** 2)


def sgd(params, grads, lr):
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)


@pytest.fixture(scope="module")
def setup():
    tasks = subspace_tasks(seed=7, n_train=3, n_test=2, n_support=3, n_query=4, dim=5)
    arch = Architecture(width=48)
    init_fn, apply_fn, _ = arch.network(depth=2)
    _, params0 = init_fn(jax.random.PRNGKey(0), (-1, tasks.dim))
    f_lin = nt.linearize(apply_fn, params0)
    X = jnp.asarray(tasks.all_points())
    theta = nt.empirical_ntk_fn(apply_fn, implementation=2)(X, None, params0)

    def head_apply(head, x):
        return apply_fn(list(params0[:-1]) + [head], x)

    K = nt.empirical_ntk_fn(head_apply, implementation=1)(X, None, params0[-1])
    f0 = apply_fn(params0, X)
    theta_np, K_np = np.asarray(theta), np.asarray(K)
    L = tasks.layout
    sl = L.slices()
    train = np.r_[sl["train_support"], sl["train_query"]]
    top = np.linalg.eigvalsh(theta_np[np.ix_(train, train)]).max()
    eta = 0.5 / top  # stable outer step for every method's kernel (each is <= Theta in norm here)
    lam = 0.5 / np.linalg.eigvalsh(theta_np).max()
    return dict(tasks=tasks, f_lin=f_lin, params0=params0, theta=theta_np, K=K_np, f0=np.asarray(f0),
                eta=float(eta), lam=float(lam))


def closed_form(s, method, test_head="learned"):
    cfg = PredictorConfig(inner_time=s["lam"] * INNER_STEPS, inner_steps=INNER_STEPS,
                          finetune_time=s["lam"] * FINETUNE_STEPS, finetune_steps=FINETUNE_STEPS,
                          outer_time=s["eta"] * OUTER_STEPS, outer_steps=OUTER_STEPS, mtl_data="all",
                          test_head=test_head)
    return predict_from_kernels(s["theta"], s["K"], s["tasks"], cfg, methods=(method,), f0=s["f0"])[method].values


def split(params):
    return list(params[:-1]), params[-1]


def join(body, head):
    return list(body) + [head]


def adapt(f_lin, params, x, y, lr, steps, head_only):
    """Unrolled inner loop: ``steps`` gradient steps of size ``lr`` on the support loss."""
    for _ in range(steps):
        if head_only:
            body, head = split(params)
            g = jax.grad(lambda h: sq(f_lin(join(body, h), x), y))(head)
            params = join(body, sgd(head, g, lr))
        else:
            g = jax.grad(lambda p: sq(f_lin(p, x), y))(params)
            params = sgd(params, g, lr)
    return params


def rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("method", ["anil", "maml"])
def test_gbml_closed_form_equals_linearised_gradient_descent(setup, method):
    s = setup
    t, f_lin, lam, eta = s["tasks"], s["f_lin"], s["lam"], s["eta"]
    head_only = method == "anil"
    inner = functools.partial(adapt, f_lin, lr=lam, steps=INNER_STEPS, head_only=head_only)

    @jax.jit
    def meta_loss(params):
        total = 0.0
        for i in range(t.layout.n_train):
            adapted = inner(params, t.train_support_x[i], t.train_support_y[i])
            total = total + sq(f_lin(adapted, t.train_query_x[i]), t.train_query_y[i])
        return total

    grad = jax.jit(jax.grad(meta_loss))
    params = s["params0"]
    for _ in range(OUTER_STEPS):
        params = sgd(params, grad(params), eta)
    preds = []
    for m in range(t.layout.n_test):
        adapted = adapt(f_lin, params, t.test_support_x[m], t.test_support_y[m], lam, FINETUNE_STEPS, head_only)
        preds.append(f_lin(adapted, t.test_query_x[m]))
    gd = np.stack([np.asarray(p) for p in preds])
    cf = closed_form(s, method)
    assert np.max(np.abs(gd - s["f0"][-gd.size:].reshape(gd.shape))) > 1e-2  # training moved the outputs
    assert rel(cf, gd) < TOL
    # the reset protocol: the trained body with the head back at its initial value, then the same
    # test-time adaptation (head only for ANIL, every parameter for MAML)
    reset = join(split(params)[0], split(s["params0"])[1])
    preds = [f_lin(adapt(f_lin, reset, t.test_support_x[m], t.test_support_y[m], lam, FINETUNE_STEPS, head_only),
                   t.test_query_x[m]) for m in range(t.layout.n_test)]
    gd_reset = np.stack([np.asarray(p) for p in preds])
    assert rel(gd_reset, gd) > 1e-3  # the protocols differ
    assert rel(closed_form(s, method, "reset"), gd_reset) < TOL


def test_mtl_closed_form_equals_linearised_gradient_descent(setup):
    s = setup
    t, f_lin, lam, eta = s["tasks"], s["f_lin"], s["lam"], s["eta"]
    body0, head0 = split(s["params0"])
    N = t.layout.n_train
    xd = np.concatenate([t.train_support_x, t.train_query_x], axis=1)  # mtl_data='all'
    yd = np.concatenate([t.train_support_y, t.train_query_y], axis=1)

    @jax.jit
    def loss(body, heads):
        return sum(sq(f_lin(join(body, heads[i]), xd[i]), yd[i]) for i in range(N))

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    body, heads = body0, [head0] * N  # every head starts at the same w0
    for _ in range(OUTER_STEPS):
        gb, gh = grad(body, heads)
        body = sgd(body, gb, eta)
        heads = [sgd(h, g, eta) for h, g in zip(heads, gh)]
    preds = []
    for m in range(t.layout.n_test):
        # head reset to w0, then fine-tuned on the test support with the trained body fixed
        adapted = adapt(f_lin, join(body, head0), t.test_support_x[m], t.test_support_y[m], lam,
                        FINETUNE_STEPS, head_only=True)
        preds.append(f_lin(adapted, t.test_query_x[m]))
    gd = np.stack([np.asarray(p) for p in preds])
    cf = closed_form(s, "mtl")
    assert rel(cf, gd) < TOL


def test_baseline_closed_form_equals_finetuning_the_head(setup):
    s = setup
    t = s["tasks"]
    preds = [s["f_lin"](adapt(s["f_lin"], s["params0"], t.test_support_x[m], t.test_support_y[m], s["lam"],
                              FINETUNE_STEPS, head_only=True), t.test_query_x[m])
             for m in range(t.layout.n_test)]
    assert rel(closed_form(s, "baseline"), np.stack([np.asarray(p) for p in preds])) < TOL
