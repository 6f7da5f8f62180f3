"""Dense linear algebra by blocks, for systems too large for scipy's LAPACK or for a second copy
(docs/theory.md §3.7): a right-looking blocked Cholesky on numpy's BLAS, its solves, LAPACK's
condition estimate over them, and the 1-norm without a temporary of the matrix's size."""
from __future__ import annotations

import numpy as np

__all__ = ["LAPACK_MAX_ORDER", "CHOLESKY_BLOCK", "cholesky", "cho_solve", "inverse_norm1", "norm1"]

#: Systems of this order and above are factorised by :func:`cholesky` (numpy's 64-bit-index
#: BLAS on blocks) instead of LAPACK's ``dpotrf`` through scipy: scipy's bundled OpenBLAS (32-bit
#: indices) crashed the process (segmentation fault) in ``dpotrf`` at orders 30,000 and 40,000 here,
#: while 20,000 ran; 23,170 is where ``8 n^2`` passes ``2^32`` bytes.
LAPACK_MAX_ORDER = 23_000
#: Block order of :func:`cholesky` and :func:`cho_solve`.
CHOLESKY_BLOCK = 2048


def cholesky(a: np.ndarray, block: int | None = None) -> int:
    """The lower Cholesky factor of the symmetric positive definite ``a`` (its lower triangle is read),
    in place, right-looking by blocks of ``block`` rows: each diagonal block by ``numpy.linalg.cholesky``,
    each panel by a triangular solve, the trailing lower triangle updated a block row at a time (the
    largest temporary is ``block x n``). The strict upper triangle is left as it was. Returns 0, or
    ``k + 1`` when the leading minor at row ``k``'s block is not positive definite (LAPACK's ``info``
    convention, to the block)."""
    import scipy.linalg

    n, block = a.shape[0], block or CHOLESKY_BLOCK
    for k in range(0, n, block):
        e = min(k + block, n)
        try:
            diag = np.linalg.cholesky(np.array(a[k:e, k:e]))
        except np.linalg.LinAlgError:
            return k + 1
        a[k:e, k:e] = diag
        if e == n:
            break
        panel = scipy.linalg.solve_triangular(diag, np.array(a[e:, k:e]).T, lower=True, check_finite=False).T
        a[e:, k:e] = panel
        for r in range(e, n, block):
            f = min(r + block, n)
            a[r:f, e:f] -= panel[r - e:f - e] @ panel[:f - e].T
    return 0


def cho_solve(factor: np.ndarray, rhs: np.ndarray, block: int | None = None) -> np.ndarray:
    """``A^-1 rhs`` from :func:`cholesky`'s factor (forward then backward substitution by
    blocks; ``rhs`` ``[n]`` or ``[n, k]``)."""
    import scipy.linalg

    n, block = factor.shape[0], block or CHOLESKY_BLOCK
    y = np.array(rhs, dtype=np.float64)
    starts = list(range(0, n, block))
    for k in starts:
        e = min(k + block, n)
        if k:
            y[k:e] -= factor[k:e, :k] @ y[:k]
        y[k:e] = scipy.linalg.solve_triangular(np.array(factor[k:e, k:e]), y[k:e], lower=True, check_finite=False)
    for k in reversed(starts):
        e = min(k + block, n)
        if e < n:
            y[k:e] -= factor[e:, k:e].T @ y[e:]
        y[k:e] = scipy.linalg.solve_triangular(np.array(factor[k:e, k:e]), y[k:e], lower=True, trans="T",
                                               check_finite=False)
    return y


def inverse_norm1(factor: np.ndarray, block: int | None = None) -> float:
    """An estimate of ``||A^-1||_1`` from :func:`cholesky`'s factor: Hager's method with Higham's
    refinements, as LAPACK's ``dlacn2`` (the estimator behind ``dpocon``): deterministic, at most
    five solves plus two, never above the true norm."""
    n = factor.shape[0]
    solve = lambda v: cho_solve(factor, v, block)  # noqa: E731  (A^-1 is symmetric: A^-T = A^-1)
    sign = lambda v: np.where(v >= 0, 1.0, -1.0)  # noqa: E731
    y = solve(np.full(n, 1.0 / n))
    est = float(np.abs(y).sum())
    if n > 1:
        xsign = sign(y)
        j = int(np.argmax(np.abs(solve(xsign))))
        for _ in range(4):
            y = solve(np.eye(1, n, j)[0])
            old, est = est, float(np.abs(y).sum())
            if np.array_equal(sign(y), xsign) or est <= old:
                est = max(est, old)
                break
            xsign = sign(y)
            x = solve(xsign)
            last, j = j, int(np.argmax(np.abs(x)))
            if abs(x[last]) == abs(x[j]):
                break
        alternating = (-1.0) ** np.arange(n) * (1.0 + np.arange(n) / (n - 1))
        est = max(est, 2.0 * float(np.abs(solve(alternating)).sum()) / (3 * n))
    return est


def norm1(a: np.ndarray, rows: int = 2048) -> float:
    """``||a||_1`` (largest column sum of ``|a|``) over row blocks: no temporary of ``a``'s size."""
    total = np.zeros(a.shape[1])
    for r in range(0, a.shape[0], rows):
        total += np.abs(a[r:r + rows]).sum(axis=0)
    return float(total.max())
