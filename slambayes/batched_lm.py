"""Levenberg–Marquardt for many small least-squares problems at once, inside a box.

A survey fits thousands of spectra with the same emulator. Fitted one at a time,
every step evaluates the emulator for one θ: a matrix–vector product that streams
the whole coefficient array through memory for a handful of FLOPs. Here every
iteration evaluates the residuals of all problems still running in one call
(`residuals(idx, X)`), so the emulator sees one matrix product per iteration,
while each problem keeps its own damping, acceptance and convergence, and
leaves the active set when it has converged.

Per problem, the step solves (JᵀJ + λ diag(JᵀJ)) δ = −Jᵀr (Marquardt's scaling,
invariant to the units of each parameter, as scipy's `x_scale="jac"`) on the
free parameters — those not held at a bound by a gradient that pushes outward —
and is projected into the box [lo, hi]. It is accepted when the actual decrease
of ½‖r‖² is a positive fraction of the predicted one; λ follows Nielsen's rule.
A problem stops when the Gauss–Newton decrement ½ gᵀ(JᵀJ)⁻¹g on its free
parameters (the cost still to gain, i.e. half the squared distance to the
minimum in units of its σ when r is whitened) falls below `ftol` · max(cost, 1),
when an accepted step changes the cost by less than `ftol` · cost, or when the step
is below `xtol` (scipy's criteria, in the same units).

`scipy.optimize.least_squares` (one problem at a time) is the reference this is
tested against (`tests/test_batched_lm.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Solution", "least_squares_batch"]


@dataclass
class Solution:
    """One problem's result, with the attributes of scipy's `OptimizeResult` that slambayes reads.

    state : what `residuals` returned third for the accepted point `x` (e.g. the model, so
        that the caller need not evaluate it again)
    """

    x: np.ndarray
    cost: float
    success: bool
    message: str
    nfev: int
    state: Any = None


_MESSAGES = {"ftol": "`ftol` termination condition is satisfied.",
             "decrement": "the Gauss-Newton decrement is below `ftol`.",
             "xtol": "`xtol` termination condition is satisfied.",
             "max_nfev": "The maximum number of function evaluations is exceeded.",
             "stalled": "the damping grew without bound: no step decreases the cost.",
             "nonfinite": "the residuals or their Jacobian are not finite."}


def _on_free(M, free):
    """M (a, n, n) restricted to the free parameters (a, n): the identity on the others, so that a
    solve leaves them where they are."""
    both = free[:, :, None] & free[:, None, :]
    return np.where(both, M, 0.0) + np.eye(M.shape[-1]) * (~free)[:, :, None]


def _step(g, A, lam, free):
    """Damped steps (a, n) on the free parameters of a batch: g (a, n), A (a, n, n), lam (a,)."""
    d = np.diagonal(A, axis1=1, axis2=2)
    d = np.maximum(d, 1e-12 * np.maximum(d.max(1, keepdims=True), 1e-300))
    M = A + lam[:, None, None] * (d[:, :, None] * np.eye(g.shape[1]))
    return np.linalg.solve(_on_free(M, free), np.where(free, -g, 0.0)[..., None])[..., 0]


def _decrement(g, A, free):
    """½ gᵀA⁻¹g on the free parameters (a,); +inf where A is singular there."""
    M = _on_free(A, free)
    gf = np.where(free, g, 0.0)
    try:
        return 0.5 * np.einsum("ij,ij->i", gf, np.linalg.solve(M, gf[..., None])[..., 0])
    except np.linalg.LinAlgError:          # one singular problem: the others still get theirs
        out = np.full(g.shape[0], np.inf)
        for i in range(g.shape[0]):
            try:
                out[i] = 0.5 * gf[i] @ np.linalg.solve(M[i], gf[i])
            except np.linalg.LinAlgError:
                pass
        return out


def _reject(idx, lam, nu, done, why):
    """More damping for the problems `idx` whose step was refused; stop those it cannot help."""
    for i in idx:
        lam[i] *= nu[i]
        nu[i] *= 2.0
        if lam[i] > 1e16:
            done[i], why[i] = True, "stalled"


def least_squares_batch(residuals, x0, lo, hi, max_nfev=100, ftol=1e-8, xtol=1e-8):
    """Minimize ½‖r_i(x_i)‖² for p problems inside the box lo ≤ x ≤ hi.

    residuals : callable (idx (a,) int, X (a, n)) → list of a tuples (r (N_i,), J (N_i, n), state)
        for the problems `idx` at X: one call per iteration for every problem still running
    x0 : (p, n) starting points (clipped into the box); lo, hi : (n,) bounds (±inf: none)
    Returns a list of p `Solution`s. Deterministic.
    """
    x = np.array(x0, float, ndmin=2)
    p, n = x.shape
    lo, hi = np.broadcast_to(np.asarray(lo, float), (n,)), np.broadcast_to(np.asarray(hi, float), (n,))
    x = np.clip(x, lo, hi)
    cost, g, A = np.full(p, np.inf), np.zeros((p, n)), np.zeros((p, n, n))
    state, nfev = [None] * p, np.zeros(p, int)
    lam, nu = np.full(p, 1e-3), np.full(p, 2.0)
    done, why = np.zeros(p, bool), [""] * p

    def evaluate(idx, X):
        out = residuals(idx, X)
        nfev[idx] += 1
        c, gg, AA = np.empty(len(idx)), np.empty((len(idx), n)), np.empty((len(idx), n, n))
        for j, (r, J, _) in enumerate(out):
            c[j], gg[j], AA[j] = 0.5 * r @ r, J.T @ r, J.T @ J
        bad = ~(np.isfinite(c) & np.all(np.isfinite(gg), 1) & np.all(np.isfinite(AA), (1, 2)))
        return c, gg, AA, [s for _, _, s in out], bad

    idx = np.arange(p)
    cost[:], g[:], A[:], state, bad = evaluate(idx, x)
    for i in np.flatnonzero(bad):
        done[i], why[i] = True, "nonfinite"
    success = np.zeros(p, bool)
    span = np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    while True:
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        xa, ga, Aa = x[act], g[act], A[act]
        at_lo, at_hi = xa <= lo + 1e-12 * span, xa >= hi - 1e-12 * span
        free = ~((at_lo & (ga > 0)) | (at_hi & (ga < 0)))
        dec = _decrement(ga, Aa, free)
        conv = dec < ftol * np.maximum(cost[act], 1.0)
        for i in act[conv]:
            done[i], success[i], why[i] = True, True, "decrement"
        over = ~conv & (nfev[act] >= max_nfev)
        for i in act[over]:
            done[i], why[i] = True, "max_nfev"
        keep = ~conv & ~over
        act, xa, ga, Aa, free = act[keep], xa[keep], ga[keep], Aa[keep], free[keep]
        if act.size == 0:
            continue
        x_new = np.clip(xa + _step(ga, Aa, lam[act], free), lo, hi)
        s = x_new - xa
        pred = -(np.einsum("ij,ij->i", ga, s) + 0.5 * np.einsum("ij,ijk,ik->i", s, Aa, s))
        small = np.linalg.norm(s, axis=1) <= xtol * (xtol + np.linalg.norm(xa, axis=1))
        for i in act[small]:
            done[i], success[i], why[i] = True, True, "xtol"
        try_ = ~small & (pred > 0)
        # a step that does not promise a decrease (the projection turned it) is a rejected one
        _reject(act[~small & ~try_], lam, nu, done, why)
        act, x_new, pred = act[try_], x_new[try_], pred[try_]
        if act.size == 0:
            continue
        c, gg, AA, st, bad = evaluate(act, x_new)
        rho = np.where(bad, -1.0, (cost[act] - c) / pred)
        for j, i in enumerate(act):
            if rho[j] > 1e-4:
                small_change = cost[i] - c[j] < ftol * cost[i] and rho[j] > 0.25
                x[i], cost[i], g[i], A[i], state[i] = x_new[j], c[j], gg[j], AA[j], st[j]
                lam[i] *= max(1.0 / 3.0, 1.0 - (2.0 * rho[j] - 1.0) ** 3)
                nu[i] = 2.0
                if small_change:
                    done[i], success[i], why[i] = True, True, "ftol"
            else:
                _reject([i], lam, nu, done, why)
    return [Solution(x[i].copy(), float(cost[i]), bool(success[i]), _MESSAGES[why[i]], int(nfev[i]), state[i])
            for i in range(p)]
