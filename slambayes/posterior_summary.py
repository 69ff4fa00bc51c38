"""A posterior summary for every catalog row: importance sampling of the catalog's density.

The density is the one NUTS and emcee sample (`slambayes.posterior`): the star's labels
θ inside the box, the spectrum described at φ = θ + δ with the calibration's offset
δ ~ N(0, Δ), times any Gaussian prior on θ. It is sampled jointly in (φ, θ):

- φ from the fit's Laplace Gaussian (its MAP and covariance: the draws of its Laplace
  check), antithetic pairs of a scrambled Sobol sequence, the same for every star
  (deterministic; the mean of a symmetric density exact; quasi-random draws give
  percentiles several times more precise than random ones where the weights are smooth);
- θ | φ exactly, for `N_REP` draws per φ: the Gaussian N(θ; φ, Δ) × the prior
  (a Kalman update), which costs no emulator evaluation. The φ draw's weight is its
  likelihood × the prior's marginal N(b; Aφ, AΔAᵀ + I) / proposal, × the share of its
  θ draws inside the box. With a prior, a second round about the Gaussian product of the
  Laplace likelihood and the prior's marginal on φ joins the first, and so does a round
  about each other mode the fit's other starts found (`MapOptions.n_starts` > 1: a minimum
  within ½χ² + 12.5 of the best, more than 3 σ away).

Only the φ draws need the emulator (`_Problem.objective`, one product per star). The
weights are Pareto-smoothed (`arviz.psislw`): k̂ says whether they can be trusted
(`khat_limit`: the usual 0.7, lower for fewer draws), and their effective sample size is
reported. Where
k̂ exceeds the limit the star is sampled again from an adapted proposal that covers
tails, a multivariate Student-t (ν = `T_DOF`) at the weighted mean and covariance of
the previous rounds' φ, with twice the draws each round, all rounds' draws pooled
(`pooled`), until k̂ is within the limit or the star's budget of extra draws
(`MapOptions.posterior_budget` × `posterior_draws`) is spent. A star whose trusted
summary is not the catalog's Gaussian (its mean or σ outside the `laplace_ok` limits)
gets one more round of twice the draws (from the Gaussian at the weighted mean and
covariance, within the budget) where the weights' effective sample size is below
`ESS_TARGET`: its percentiles are then what the row is read by, and 128 draws leave them
0.1–0.3 σ noisy. `method` says which round
answered: "importance", "importance_adapted", or "unreliable" (the budget spent; the
round of lowest k̂ is kept and the catalog's flag says so).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["PERCENTILES", "KHAT_LIMIT", "khat_limit", "T_DOF", "N_REP", "ESS_TARGET", "Draws", "t_draws", "propose", "pooled",
           "summarize", "posterior_summary", "Summary"]

PERCENTILES = (5, 16, 50, 84, 95)
KHAT_LIMIT = 0.7

T_DOF = 5.0          # the escalation's Student-t: degrees of freedom (tails ∝ |x|^-(ν+n))
T_SCALE = 1.5        # and scale, in σ of the adapted covariance
G_SCALE = 1.3        # the first round's Gaussian: the Laplace covariance × G_SCALE²
# a round after failed weights: its scale matrix this × the weighted covariance, since weights
# that failed come from a proposal that missed part of the posterior, whose spread they
# underestimate (on skewed one-label posteriors 1.3–4× wider than the Laplace σ the
# percentiles' largest error 2.3 → 0.18 σ; 1.0 and 1.5 left 1–3 of 10 stars unreliable)
ADAPT_INFLATE = 2.0
ESS_TARGET = 200     # effective draws a non-Gaussian posterior's percentiles need (p16 to ≈ 0.1 σ)
MIN_FINITE = 16     # draws of nonzero weight PSIS needs to fit the tail (below: not trusted)
N_REP = 32           # θ draws per φ draw where the calibration or a prior makes θ differ from φ


def khat_limit(n_draws):
    """The largest Pareto k̂ whose weights are trusted for n_draws draws: min(0.7, 1 − 1/log10 S)
    (Vehtari et al. 2024, "Pareto smoothed importance sampling", JMLR 25, 72: with fewer draws
    the smoothed estimate needs a lighter tail; 0.53 at 128 draws, 0.7 from 2200 on)."""
    return min(KHAT_LIMIT, 1.0 - 1.0 / np.log10(max(n_draws, 11)))


def _sobol(n_points, dim, seed):
    from scipy.stats import qmc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # Sobol's balance wants powers of 2; any size works
        u = qmc.Sobol(dim, scramble=True, seed=seed).random(n_points)
    return np.clip(u, 1e-12, 1 - 1e-12)


def _log_unit(r2, n, heavy):
    """The proposal's normalized log density at squared radius r2 (in units of its scale matrix):
    N(0, G_SCALE² I), or with heavy t_ν(0, T_SCALE² I)."""
    from scipy.special import gammaln

    if heavy:
        return (gammaln(0.5 * (T_DOF + n)) - gammaln(0.5 * T_DOF) - 0.5 * n * np.log(T_DOF * np.pi)
                - n * np.log(T_SCALE) - 0.5 * (T_DOF + n) * np.log1p(r2 / (T_DOF * T_SCALE**2)))
    return -0.5 * r2 / G_SCALE**2 - n * np.log(G_SCALE) - 0.5 * n * np.log(2 * np.pi)


@functools.lru_cache(maxsize=32)
def _unit_draws(n_draws, n, seed, heavy=False):
    from scipy.stats import chi2, norm

    if heavy:
        u = _sobol(n_draws // 2, n + 1, seed)
        x = T_SCALE * norm.ppf(u[:, :n]) * np.sqrt(T_DOF / chi2.ppf(u[:, n], T_DOF))[:, None]
    else:
        x = G_SCALE * norm.ppf(_sobol(n_draws // 2, n, seed))
    x = np.vstack([x, -x])
    log_q = _log_unit(np.sum(x * x, 1), n, heavy)
    x.setflags(write=False)
    log_q.setflags(write=False)
    return x, log_q


@functools.lru_cache(maxsize=32)
def _normal_draws(m, n, seed):
    from scipy.stats import norm

    z = norm.ppf(_sobol(m, n, seed))
    z.setflags(write=False)
    return z


def t_draws(n_draws, n, seed=0, heavy=False):
    """Draws (n_draws, n) of N(0, I), or with heavy of the Student-t t_ν(0, T_SCALE² I)
    (ν = T_DOF), as antithetic pairs of a scrambled Sobol sequence, and the proposal's log
    density at each draw (n_draws,)."""
    return _unit_draws(int(n_draws), int(n), int(seed), bool(heavy))


@dataclass
class Draws:
    """One round of φ draws of one star, standardized units: points (m, n), log target (the fit's
    objective density: likelihood, with the fit's own prior terms; box not applied; up to a
    constant) and the proposal's normalized log density (m,)."""

    phi: np.ndarray
    log_target: np.ndarray
    log_q: np.ndarray
    center: np.ndarray = None      # the proposal's, and (for the fit's own round) the MAP
    cov: np.ndarray = None
    evaluate: object = None        # points → log target, for further rounds
    heavy: bool = False            # the proposal is the Student-t (else the Gaussian)
    modes: list = ()               # other local maxima of the target (standardized points)


def propose(evaluate, center, cov, n_draws, seed=0, cap=None, heavy=False):
    """`Draws` from the proposal (`t_draws`) at `center` (n,) with scale matrix `cov` (n, n), its
    σ per parameter at most `cap` (n,) if given (a Laplace covariance wider than the box, at a
    flat posterior's edge, would put every draw outside it); evaluate(points (m, n)) → log
    target (m,)."""
    if cap is not None:
        shrink = np.minimum(1.0, cap / np.sqrt(np.diag(cov)))
        cov = cov * np.outer(shrink, shrink)
    x, log_q = t_draws(n_draws, center.size, seed, heavy)
    L = np.linalg.cholesky(cov)
    pts = center + x @ L.T
    return Draws(pts, np.asarray(evaluate(pts), float), log_q - np.sum(np.log(np.diag(L))), np.array(center),
                 np.array(cov), evaluate, heavy)


def _log_proposal(x, d):
    """The normalized log density (m,) of the proposal of `Draws` d at points x (m, n)."""
    L = np.linalg.cholesky(d.cov)
    r2 = np.sum(np.linalg.solve(L, (x - d.center).T) ** 2, 0)
    return _log_unit(r2, x.shape[1], d.heavy) - np.sum(np.log(np.diag(L)))


def pooled(rounds):
    """All rounds' draws as one sample of their mixture, each draw weighted against the mixture
    density Σ_r (m_r / M) q_r (the deterministic-mixture weights of adaptive multiple importance
    sampling: every evaluated draw counts, and none carries a weight its own round's proposal
    alone would give it)."""
    if len(rounds) == 1:
        return rounds[0]
    phi = np.vstack([d.phi for d in rounds])
    sizes = np.array([len(d.phi) for d in rounds], float)
    log_q = np.logaddexp.reduce([np.log(m / sizes.sum()) + _log_proposal(phi, d) for m, d in zip(sizes, rounds)], 0)
    last = rounds[-1]
    return Draws(phi, np.concatenate([d.log_target for d in rounds]), log_q, last.center, last.cov, last.evaluate,
                 last.heavy)


@dataclass
class Summary:
    """A star's posterior summary, physical units: mean, std (n,), percentiles (len(PERCENTILES),
    n); Pareto k̂, the effective sample size of the weights, the draws evaluated, the method."""

    mean: np.ndarray
    std: np.ndarray
    percentiles: np.ndarray
    khat: float
    ess: float
    n_draws: int
    method: str

    @classmethod
    def none(cls, n, method="none"):
        nan = np.full(n, np.nan)
        return cls(nan, nan, np.full((len(PERCENTILES), n), np.nan), np.nan, np.nan, 0, method)


def _psd_factor(C):
    lam, V = np.linalg.eigh(0.5 * (C + C.T))
    return V * np.sqrt(np.clip(lam, 0.0, None))


def _conditional(delta, prior):
    """θ | φ ~ N(φ + K (b − A φ), C) and the prior's marginal at φ, for δ ~ N(0, Δ) and the prior
    A θ ~ N(b, I) (None: no prior). Returns (K or None, C, A, b, S⁻¹)."""
    if prior is None:
        return None, delta, None, None, None
    A, b = prior
    S_inv = np.linalg.inv(A @ delta @ A.T + np.eye(len(b)))
    K = delta @ A.T @ S_inv
    return K, delta - K @ A @ delta, A, b, S_inv


def summarize(draws, delta, prior, low, high, seed=0):
    """Weighted θ draws of one round → (θ (M, n), weights (M,), φ weights (m,), k̂, ESS).

    draws : `Draws`; delta : (n, n) Δ standardized (zeros: θ = φ); prior : (A (q, n), b (q,))
    with A θ ~ N(b, I) in standardized units, or None; low, high : the box (n,)."""
    import arviz as az

    m, n = draws.phi.shape
    K, C, A, b, S_inv = _conditional(delta, prior)
    mean = draws.phi if K is None else draws.phi + (b - draws.phi @ A.T) @ K.T
    log_w = draws.log_target - draws.log_q
    if A is not None:
        r = b - draws.phi @ A.T
        log_w = log_w - 0.5 * np.einsum("mi,ij,mj->m", r, S_inv, r)
    F = _psd_factor(C)
    rep = N_REP if np.any(F) else 1
    theta = mean[:, None, :] + (_normal_draws(m * rep, n, seed + 1).reshape(m, rep, n) @ F.T if rep > 1 else 0.0)
    inside = np.all((theta >= low) & (theta <= high), -1)                 # (m, rep)
    share = inside.mean(1)
    with np.errstate(divide="ignore"):
        log_w = np.where(share > 0, log_w + np.log(share), -np.inf)
    log_w = np.where(np.isfinite(log_w), log_w, -np.inf)
    if not np.any(np.isfinite(log_w)):
        return None
    finite = np.isfinite(log_w)
    if finite.sum() < MIN_FINITE:
        # too few draws in the support to smooth or judge: weights as they are, never trusted
        smoothed, khat = log_w[finite], np.inf
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smoothed, khat = az.psislw(log_w[finite])
    W = np.zeros(m)
    W[finite] = np.exp(smoothed - np.max(smoothed))
    W /= W.sum()
    w = (W / np.maximum(inside.sum(1), 1))[:, None] * inside
    return theta.reshape(-1, n), w.ravel(), W, float(khat), float(1.0 / np.sum(W ** 2))


def _weighted_percentiles(x, w, q):
    """Percentiles q (in %) of the weighted sample x (M,), w (M,) (sum 1): the weighted empirical
    CDF at each point's mid-mass, interpolated."""
    order = np.argsort(x)
    xs, ws = x[order], w[order]
    cdf = np.cumsum(ws) - 0.5 * ws
    return np.interp(np.asarray(q) / 100.0, cdf, xs)


def _moments(theta, w):
    mean = w @ theta
    return mean, np.sqrt(np.maximum(w @ (theta - mean) ** 2, 0.0))


def _better(got, trusted, best):
    """Whether a round's result `got` replaces `best`: trusted weights beat untrusted ones, then
    the larger effective sample size (trusted) or the lower k̂ (untrusted)."""
    if best is None:
        return True
    best_got, best_trusted = best[0], best[1]
    if trusted != best_trusted:
        return trusted
    return got[4] > best_got[4] if trusted else got[3] < best_got[3]


def _gaussian_like(got, laplace):
    """Whether the weighted θ draws of `got` have the catalog Gaussian's mean and σ within the
    `laplace_ok` limits (laplace: its mean and σ, standardized)."""
    from .laplace_check import within_limits

    mean, sd = _moments(got[0], got[1])
    return within_limits((mean - laplace[0]) / laplace[1], sd / laplace[1])


def posterior_summary(first, evaluate, center, cov, delta, prior, space, n_draws, budget, seed=0, laplace=None):
    """The `Summary` of one star (see the module docstring).

    first : `Draws` of the fit's own check (about `center` with scale `cov`), or None to draw them;
    evaluate : points (m, n) standardized → log target (m,) (the fit's objective density);
    center (n,), cov (n, n) : the fit's MAP and Laplace covariance of that density, standardized;
    delta : (n, n) the calibration's Δ standardized; prior : (A, b) or None (see `summarize`);
    space : the `LabelSpace` (box, units); n_draws : the first round's draws;
    budget : the extra draws allowed, in units of n_draws; laplace : (mean, σ) (n,), (n,) of the
    catalog's Gaussian, standardized, or None: where the posterior is not that Gaussian
    (`_gaussian_like`) and the weights' effective sample size is below ESS_TARGET, further rounds
    add draws within the budget (its percentiles, not only its mean and σ, are then what
    the row is read by)."""
    n = center.size
    low, high = space.low_std, space.high_std
    cap = 0.5 * (high - low)
    rounds = [first if first is not None else propose(evaluate, center, cov, n_draws, seed, cap=cap)]
    for j, mode in enumerate(getattr(rounds[0], "modes", ())):
        # another start's minimum: a round about it, with the MAP's covariance
        rounds.append(propose(evaluate, mode, cov, n_draws, seed + 201 + j, cap=cap))
    if prior is not None:
        # the likelihood's draws are about its own MAP; the posterior's φ lies where the prior
        # pulls it: a round about the Gaussian product of the two joins them
        mu, P = _product(center, cov, delta, prior)
        rounds.append(propose(evaluate, mu, P, n_draws, seed + 101, cap=cap))
    best, method, precise = None, "importance", False
    size, base = n_draws, sum(len(d.phi) for d in rounds)
    while True:
        draws = pooled(rounds)
        got = summarize(draws, delta, prior, low, high, seed)
        trusted = got is not None and got[3] <= khat_limit(len(draws.phi))
        if got is not None and _better(got, trusted, None if best is None else (best, best_trusted)):
            best, best_trusted, best_method = got, trusted, method
        if trusted and (laplace is None or got[4] >= ESS_TARGET or _gaussian_like(got, laplace)):
            break
        size *= 2
        # draws for precision alone (the weights are trusted): one round at most
        if len(draws.phi) - base + size > budget * n_draws or (trusted and precise):
            if best is None:
                best_method = "none"
            elif not best_trusted:
                best_method = "unreliable"
            break
        # weights that failed call for tails; trusted ones of a non-Gaussian posterior for more
        # draws where it is
        mu, P = _adapted(draws, got, cov, ADAPT_INFLATE if not trusted else 1.0)
        rounds.append(propose(evaluate, mu, P, size, seed + len(rounds), cap=cap, heavy=not trusted))
        precise = precise or trusted
        method = "importance_adapted"
    used = sum(len(d.phi) for d in rounds)
    if best is None:
        return Summary.none(n, best_method)
    theta, w, _, khat, ess = best
    mean, sd = _moments(theta, w)
    pct = np.array([_weighted_percentiles(theta[:, j], w, PERCENTILES) for j in range(n)]).T
    return Summary(space.from_std(mean), sd * space.scale, space.from_std(pct), khat, ess, used, best_method)


def _product(center, cov, delta, prior):
    """The Gaussian product of the Laplace likelihood N(center, cov) and the prior's marginal on
    φ, N(Aφ; b, AΔAᵀ + I): (mean, covariance)."""
    A, b = prior
    S_inv = np.linalg.inv(A @ delta @ A.T + np.eye(len(b)))
    P = np.linalg.inv(cov)
    Hc = np.linalg.inv(P + A.T @ S_inv @ A)
    return Hc @ (P @ center + A.T @ S_inv @ b), Hc


def _adapted(draws, got, cov, inflate):
    """The next round's proposal (center, scale matrix): the weighted mean and `inflate` × the
    weighted covariance of the pooled rounds' φ (blended with the Laplace covariance `cov`, so
    that a degenerate weighting still gives a proper proposal)."""
    if got is None:
        return draws.center, 4.0 * cov
    W = got[2]
    mu = W @ draws.phi
    d = draws.phi - mu
    C = (W[:, None] * d).T @ d
    return mu, inflate * (C + 0.1 * cov)
