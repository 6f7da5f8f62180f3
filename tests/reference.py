"""A deliberately naive re-implementation of docs/theory.md §3, for tests only.

Python loops over tasks and task pairs, ``scipy.linalg.expm`` / matrix powers for the dynamics and
``numpy.linalg.solve`` for inverses: nothing is shared with ``ntk_bridge.predictors``.
"""
import numpy as np
import scipy.linalg


def operator(G, time, steps=None, l2=None):
    """T = G^-1 (I - exp(-t G)), G^-1 (I - (I - t/steps G)^steps), or (G + l2)^-1."""
    n = G.shape[0]
    I = np.eye(n)
    if l2 is not None:
        return np.linalg.inv(G + l2 * I)
    if np.isinf(time):
        return np.linalg.inv(G)
    if steps is None:
        return np.linalg.solve(G, I - scipy.linalg.expm(-time * G))
    return np.linalg.solve(G, I - np.linalg.matrix_power(I - time / steps * G, steps))


def split(tasks, f0):
    L = tasks.layout
    P = L.n_points
    f0 = np.zeros((P, tasks.n_outputs)) if f0 is None else np.asarray(f0).reshape(P, -1)
    idx = {}
    start = 0
    for name, T, n in (("s", L.n_train, L.n_support), ("q", L.n_train, L.n_query),
                       ("ts", L.n_test, L.m_support), ("tq", L.n_test, L.m_query)):
        idx[name] = [np.arange(start + t * n, start + (t + 1) * n) for t in range(T)]
        start += T * n
    return idx, f0


def gbml(Theta, G, tasks, inner, finetune, outer, f0=None, K=None, test_head="learned", outer_solve=None):
    """inner/finetune/outer: (time, steps) tuples; ``test_head='reset'`` needs the readout kernel ``K``.
    ``outer_solve(Phi, R)``: replaces ``operator(Phi, *outer) @ R`` (a linear solve at an infinite outer time)."""
    idx, f0 = split(tasks, f0)
    N, M = tasks.layout.n_train, tasks.layout.n_test
    A = []
    for i in range(N):
        s, q = idx["s"][i], idx["q"][i]
        A.append(G[np.ix_(q, s)] @ operator(G[np.ix_(s, s)], *inner))
    blocks = [[None] * N for _ in range(N)]
    for i in range(N):
        for j in range(N):
            si, qi, sj, qj = idx["s"][i], idx["q"][i], idx["s"][j], idx["q"][j]
            blocks[i][j] = (Theta[np.ix_(qi, qj)] - A[i] @ Theta[np.ix_(si, qj)]
                            - Theta[np.ix_(qi, sj)] @ A[j].T + A[i] @ Theta[np.ix_(si, sj)] @ A[j].T)
    Phi = np.block(blocks)
    F0 = np.concatenate([f0[idx["q"][i]] + A[i] @ (tasks.train_support_y[i] - f0[idx["s"][i]])
                         for i in range(N)])
    Y = tasks.train_query_y.reshape(-1, tasks.n_outputs)
    coef = operator(Phi, *outer) @ (Y - F0) if outer_solve is None else outer_solve(Phi, Y - F0)
    preds = []
    if test_head == "reset":
        B = Theta - K
        for m in range(M):
            s, q = idx["ts"][m], idx["tq"][m]
            g = {}
            for name, rows in (("s", s), ("q", q)):
                g[name] = f0[rows].copy()
                for j in range(N):
                    c_j = coef[j * len(idx["q"][j]):(j + 1) * len(idx["q"][j])]
                    g[name] += B[np.ix_(rows, idx["q"][j])] @ c_j - B[np.ix_(rows, idx["s"][j])] @ A[j].T @ c_j
            Ahat = G[np.ix_(q, s)] @ operator(G[np.ix_(s, s)], *finetune)
            preds.append(g["q"] + Ahat @ (tasks.test_support_y[m] - g["s"]))
        return np.stack(preds), Phi
    for m in range(M):
        s, q = idx["ts"][m], idx["tq"][m]
        Ahat = G[np.ix_(q, s)] @ operator(G[np.ix_(s, s)], *finetune)
        cross = np.concatenate([
            Theta[np.ix_(q, idx["q"][j])] - Ahat @ Theta[np.ix_(s, idx["q"][j])]
            - Theta[np.ix_(q, idx["s"][j])] @ A[j].T + Ahat @ Theta[np.ix_(s, idx["s"][j])] @ A[j].T
            for j in range(N)], axis=1)
        F0m = f0[q] + Ahat @ (tasks.test_support_y[m] - f0[s])
        preds.append(F0m + cross @ coef)
    return np.stack(preds), Phi


def mtl(Theta, K, tasks, finetune, outer, data="all", f0=None, outer_solve=None):
    idx, f0 = split(tasks, f0)
    N, M = tasks.layout.n_train, tasks.layout.n_test
    D = [np.concatenate([idx["s"][i], idx["q"][i]]) if data == "all" else idx["q"][i] for i in range(N)]
    Yd = [np.concatenate([tasks.train_support_y[i], tasks.train_query_y[i]]) if data == "all"
          else tasks.train_query_y[i] for i in range(N)]
    blocks = [[None] * N for _ in range(N)]
    for i in range(N):
        for j in range(N):
            B = Theta[np.ix_(D[i], D[j])] - K[np.ix_(D[i], D[j])]
            if i == j:
                B = B + K[np.ix_(D[i], D[j])]
            blocks[i][j] = B
    Kmtl = np.block(blocks)
    allD = np.concatenate(D)
    R = np.concatenate(Yd) - f0[allD]
    alpha = operator(Kmtl, *outer) @ R if outer_solve is None else outer_solve(Kmtl, R)
    preds = []
    for m in range(M):
        s, q = idx["ts"][m], idx["tq"][m]
        gs = f0[s] + (Theta - K)[np.ix_(s, allD)] @ alpha
        gq = f0[q] + (Theta - K)[np.ix_(q, allD)] @ alpha
        preds.append(gq + K[np.ix_(q, s)] @ operator(K[np.ix_(s, s)], *finetune) @ (tasks.test_support_y[m] - gs))
    return np.stack(preds)


def baseline(K, tasks, finetune, f0=None):
    idx, f0 = split(tasks, f0)
    preds = []
    for m in range(tasks.layout.n_test):
        s, q = idx["ts"][m], idx["tq"][m]
        preds.append(f0[q] + K[np.ix_(q, s)] @ operator(K[np.ix_(s, s)], *finetune) @ (tasks.test_support_y[m] - f0[s]))
    return np.stack(preds)
