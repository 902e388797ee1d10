r"""Compiled full-batch gradient descent for the fixed-sample experiments of
:func:`mflib.two_timescale.train_fixed_sample` (Marion & Berthier 2023, App. C).

The model is additive, :math:`f(x)=\sum_i f_i(x_i)` with
:math:`f_i(t)=\sum_k a_{k,i}\phi(t-u_{k,i})`, so everything a step needs is a
sum over one coordinate at a time.  Each coordinate of the sample is sorted
once; then, with ``n`` points and ``K`` units per coordinate:

* smooth step, :math:`\phi(z)=\sigma(z/\eta)`: :math:`\phi` is exactly 0 for
  :math:`z/\eta\le-\frac12` and exactly 1 for :math:`z/\eta\ge\frac12`, and
  :math:`\phi'` vanishes outside the window.  With ``lo_k``/``hi_k`` the first
  sorted index whose :math:`z/\eta` (computed as the elementwise formula
  computes it: ``(x - u) / eta``, monotone in ``x``) exceeds
  :math:`-\frac12` / reaches :math:`\frac12`, unit ``k`` adds the constant
  :math:`a_k` to the points from ``hi_k`` on (a running sum over the sorted
  points) and :math:`a_k\sigma(z)` to the ``hi_k - lo_k`` points of its window;
  :math:`\partial_a=\sum_s g_s\phi` is a suffix sum of the residual weights
  ``g`` at ``hi_k`` plus the window, :math:`\partial_u` is the window alone;
* ReLU, :math:`\phi(z)=\max(z,0)`: with ``hi_k`` the first point with
  :math:`x-u_k>0`, :math:`f_i` is linear between the sorted kinks (running sums
  of :math:`a_k` and :math:`a_ku_k`), and the gradients are suffix sums of
  :math:`g_s` and :math:`g_sx_s`.

This is the same function and the same gradient as the elementwise
``(runs, n, K, d)`` evaluation (only the order of the floating-point sums
differs), at :math:`O(nd+K d(n\eta+\log n))` per epoch instead of
:math:`O(nKd)`.  The tests check it against the autograd engine.

Runs are independent: each is one ``numba``-compiled loop (``nogil``), and
runs are spread over threads; the results do not depend on the number of
threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _first(xs, u, eta, level, strict, j):
    """First index of the sorted ``xs`` whose ``z = (xs - u) / eta`` is >= ``level``
    (> ``level`` if ``strict``), ``len(xs)`` if none.  ``z`` is non-decreasing in
    ``xs``, so the answer is exact; ``j`` is a guess (the previous epoch's
    answer): a short walk from it, a bisection if it is far off."""
    n = xs.shape[0]
    if j < 0 or j > n:
        j = 0
    steps = 0
    while j > 0 and steps < 8:
        z = (xs[j - 1] - u) / eta
        if (z > level) if strict else (z >= level):
            j -= 1
            steps += 1
        else:
            break
    while j < n and steps < 8:
        z = (xs[j] - u) / eta
        if (z > level) if strict else (z >= level):
            break
        j += 1
        steps += 1
    if steps < 8:
        return j
    lo = 0
    hi = n
    while lo < hi:
        mid = (lo + hi) >> 1
        z = (xs[mid] - u) / eta
        if (z > level) if strict else (z >= level):
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True, inline="always")
def _sig(z):
    zc = min(max(z, -0.5), 0.5)
    if zc < 0.0:
        q = zc + 0.5
        return 4.0 * q * q * q
    q = 0.5 - zc
    return 1.0 - 4.0 * q * q * q


@njit(cache=True, inline="always")
def _order(hi, i, order):
    """Insertion sort of the units by hi[:, i] (into ``order``)."""
    K = order.shape[0]
    for k in range(K):
        order[k] = k
    for k in range(1, K):
        t = order[k]
        key = hi[t, i]
        m = k - 1
        while m >= 0 and hi[order[m], i] > key:
            order[m + 1] = order[m]
            m -= 1
        order[m + 1] = t


@njit(cache=True, nogil=True)
def _bounds(u, xs, perm, eta, relu, lo, hi, lab):
    """Update the window bounds lo/hi (K, d) to the current positions (the
    previous values are the guesses) and the labels ``lab[s, i]`` = number of
    units of coordinate ``i`` whose step is fully on at point ``s`` (sorted
    index >= hi); a label changes only for the points that a bound crossed."""
    d, n = xs.shape
    K = u.shape[0]
    for i in range(d):
        x = xs[i]
        p = perm[i]
        for k in range(K):
            uk = u[k, i]
            if relu:
                h = _first(x, uk, 1.0, 0.0, True, hi[k, i])
                l = h
            else:
                l = _first(x, uk, eta, -0.5, True, lo[k, i])
                h = _first(x, uk, eta, 0.5, False, hi[k, i])
            h0 = hi[k, i]
            if h0 < 0:                        # first call: count from scratch
                for j in range(h, n):
                    lab[p[j], i] += 1
            elif h < h0:
                for j in range(h, h0):
                    lab[p[j], i] += 1
            else:
                for j in range(h0, h):
                    lab[p[j], i] -= 1
            lo[k, i] = l
            hi[k, i] = h


@njit(cache=True, inline="always")
def _tables(a, u, hi, relu, order, V0, V1):
    """V0[i, t] (and the slope V1[i, t] for relu): the value of coordinate i's
    fully-on units at a point of label t."""
    K, d = a.shape
    for i in range(d):
        _order(hi, i, order)
        s0 = 0.0
        s1 = 0.0
        V0[i, 0] = 0.0
        V1[i, 0] = 0.0
        for t in range(K):
            k = order[t]
            if relu:
                s1 += a[k, i]
                s0 += a[k, i] * u[k, i]
            else:
                s0 += a[k, i]
            V0[i, t + 1] = s0
            V1[i, t + 1] = s1


@njit(cache=True, nogil=True)
def _forward(a, u, X, xs, perm, y, eta, relu, r, lo, hi, lab, order, V0, V1):
    """Residual r = f(X) - y (in place), from the current bounds and labels."""
    d, n = xs.shape
    K = a.shape[0]
    _tables(a, u, hi, relu, order, V0, V1)
    if relu:
        for s in range(n):
            acc = -y[s]
            for i in range(d):
                t = lab[s, i]
                acc += V1[i, t] * X[s, i] - V0[i, t]
            r[s] = acc
        return
    for s in range(n):
        acc = -y[s]
        for i in range(d):
            acc += V0[i, lab[s, i]]
        r[s] = acc
    for i in range(d):
        x = xs[i]
        p = perm[i]
        for k in range(K):
            uk = u[k, i]
            ak = a[k, i]
            for j in range(lo[k, i], hi[k, i]):
                r[p[j]] += ak * _sig((x[j] - uk) / eta)


@njit(cache=True, nogil=True)
def _gradient(a, u, X, xs, perm, eta, relu, g, lo, hi, lab, order, H0, H1, ga, gu):
    """Gradients of sum_s g_s f(x_s) in a and u (written into ga, gu)."""
    d, n = xs.shape
    K = a.shape[0]
    # histograms of g (and g x) over the labels of each coordinate; even and odd
    # points go to separate copies (rows d..2d-1) so that consecutive updates of one
    # bin do not wait on each other
    H0[:, :] = 0.0
    H1[:, :] = 0.0
    n2 = n - n % 2
    if relu:
        for s in range(0, n2, 2):
            gs = g[s]
            gt = g[s + 1]
            for i in range(d):
                t = lab[s, i]
                H0[i, t] += gs
                H1[i, t] += gs * X[s, i]
                t = lab[s + 1, i]
                H0[d + i, t] += gt
                H1[d + i, t] += gt * X[s + 1, i]
        for s in range(n2, n):
            for i in range(d):
                t = lab[s, i]
                H0[i, t] += g[s]
                H1[i, t] += g[s] * X[s, i]
    else:
        for s in range(0, n2, 2):
            gs = g[s]
            gt = g[s + 1]
            for i in range(d):
                H0[i, lab[s, i]] += gs
                H0[d + i, lab[s + 1, i]] += gt
        for s in range(n2, n):
            for i in range(d):
                H0[i, lab[s, i]] += g[s]
    for i in range(d):
        for t in range(K + 1):
            H0[i, t] += H0[d + i, t]
            H1[i, t] += H1[d + i, t]
    for i in range(d):
        _order(hi, i, order)
        acc = 0.0
        accx = 0.0
        for t in range(K - 1, -1, -1):      # unit order[t] is on at labels >= t + 1
            k = order[t]
            acc += H0[i, t + 1]
            accx += H1[i, t + 1]
            if relu:
                ga[k, i] = accx - u[k, i] * acc
                gu[k, i] = -a[k, i] * acc
            else:
                ga[k, i] = acc
        if not relu:
            x = xs[i]
            p = perm[i]
            for k in range(K):
                uk = u[k, i]
                w0 = 0.0
                w1 = 0.0
                for j in range(lo[k, i], hi[k, i]):
                    gj = g[p[j]]
                    z = (x[j] - uk) / eta
                    w0 += gj * _sig(z)
                    q = 0.5 - abs(z)
                    w1 += gj * (12.0 * q * q)
                ga[k, i] += w0
                gu[k, i] = -a[k, i] * w1 / eta


@njit(cache=True, nogil=True)
def _objective(r, n):
    """||r|| (four partial sums: no serial chain of n additions)."""
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    n4 = n - n % 4
    for s in range(0, n4, 4):
        s0 += r[s] * r[s]
        s1 += r[s + 1] * r[s + 1]
        s2 += r[s + 2] * r[s + 2]
        s3 += r[s + 3] * r[s + 3]
    for s in range(n4, n):
        s0 += r[s] * r[s]
    return np.sqrt((s0 + s1) + (s2 + s3))


@njit(cache=True, nogil=True)
def _run(a, u, X, xs, perm, y, eta, relu, lr_a, lr_u, epochs, hist, lab):
    """One run in place.  Returns (epoch whose objective is not finite, or -1;
    final RMSE); ``hist[e]`` is the objective ||f(X) - y|| / n before update e.
    ``lab`` is an ``(n, d)`` integer work array (uint8 when the labels fit)."""
    d, n = xs.shape
    K = a.shape[0]
    r = np.empty(n)
    g = np.empty(n)
    lo = np.full((K, d), -1, dtype=np.int64)
    hi = np.full((K, d), -1, dtype=np.int64)
    lab[:, :] = 0
    order = np.empty(K, dtype=np.int64)
    V0 = np.empty((d, K + 1))
    V1 = np.empty((d, K + 1))
    H0 = np.empty((2 * d, K + 1))
    H1 = np.empty((2 * d, K + 1))
    ga = np.empty((K, d))
    gu = np.empty((K, d))
    for e in range(epochs):
        _bounds(u, xs, perm, eta, relu, lo, hi, lab)
        _forward(a, u, X, xs, perm, y, eta, relu, r, lo, hi, lab, order, V0, V1)
        nrm = _objective(r, n)
        obj = nrm / n
        hist[e] = obj
        if not np.isfinite(obj):
            return e, np.nan
        # d obj / d f(x_s) = r_s / (n ||r||)  (0 at a zero residual, as autograd's norm)
        c = 1.0 / (n * nrm) if nrm > 0.0 else 0.0
        for s in range(n):
            g[s] = r[s] * c
        _gradient(a, u, X, xs, perm, eta, relu, g, lo, hi, lab, order, H0, H1, ga, gu)
        for k in range(K):
            for i in range(d):
                a[k, i] -= lr_a * ga[k, i]
                u[k, i] -= lr_u * gu[k, i]
        for k in range(K):
            for i in range(d):
                if not (np.isfinite(a[k, i]) and np.isfinite(u[k, i])):
                    return e + 1, np.nan
    _bounds(u, xs, perm, eta, relu, lo, hi, lab)
    _forward(a, u, X, xs, perm, y, eta, relu, r, lo, hi, lab, order, V0, V1)
    return -1, _objective(r, n) / np.sqrt(n)


@njit(cache=True, nogil=True)
def _run_block(A, U, X, xs, perm, y, eta, relu, lr_a, lr_u, epochs, hist, rmse, div, idx, lab):
    for t in range(idx.shape[0]):
        i = idx[t]
        div[i], rmse[i] = _run(A[i], U[i], X, xs, perm, y, eta, relu, lr_a, lr_u, epochs, hist[i], lab)


def train(X, y, a0, u0, *, relu: bool, eta: float, lr_a: float, lr_u: float, epochs: int,
          threads: int):
    """Full-batch GD from ``a0``, ``u0`` (``(S, K, d)`` float64 arrays, not
    modified).  Returns ``(a, u, rmse, history, diverged_epoch)`` as NumPy
    arrays (``diverged_epoch[s] = -1`` for a finite run)."""
    from concurrent.futures import ThreadPoolExecutor

    X = np.ascontiguousarray(X, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    n, d = X.shape
    perm = np.ascontiguousarray(np.argsort(X, axis=0, kind="stable").T)      # (d, n)
    xs = np.ascontiguousarray(np.take_along_axis(X, perm.T, axis=0).T)         # (d, n) sorted
    A = np.array(a0, dtype=np.float64, order="C")
    U = np.array(u0, dtype=np.float64, order="C")
    S = A.shape[0]
    hist = np.zeros((S, epochs))
    rmse = np.zeros(S)
    div = np.full(S, -1, dtype=np.int64)
    workers = max(1, min(threads, S))
    blocks = [np.arange(b, S, workers, dtype=np.int64) for b in range(workers)]

    K = A.shape[1]
    lab_dtype = np.uint8 if K < 255 else np.int64

    def block(idx):
        lab = np.zeros((n, d), dtype=lab_dtype)      # one label array per worker
        _run_block(A, U, X, xs, perm, y, float(eta), bool(relu), float(lr_a), float(lr_u), int(epochs),
                   hist, rmse, div, idx, lab)

    if workers == 1:
        block(blocks[0])
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(block, blocks))
    return A, U, rmse, hist, div
