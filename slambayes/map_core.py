"""The single-star MAP: least squares on the whitened residuals of one noise model.

`fit_star` is the one fitting routine of slambayes, and `fit_stars` the same fit
for a chunk of spectra: the survey `fit_map` and the out-of-fold calibration call
it through `fit_spectra` (start points, batches), `Posterior.find_map` with one
star. Both minimize

    ½ ‖Σ^(−½) (f − f(θ))‖² + ½ Σ_p ‖L_p⁻¹ (θ_p − μ_p)‖²

(Eq. 8 or its correlated form, plus Gaussian priors as extra residuals) with the
emulator's analytic Jacobian, in standardized label space inside the support box:
`fit_star` with `scipy.optimize.least_squares`, `fit_stars` by default with the
batched Levenberg–Marquardt of `slambayes.batched_lm` (all stars' emulator
evaluations of an iteration in one product); from the solution on (clipping
rounds, covariance, Laplace check, flags) both share every step. Its covariance is the inverse
of the exact Hessian of that objective at the minimum, JᵀΣ⁻¹J − Σ_p (Σ⁻¹r)_p ∇²f_p
(the emulator's analytic second derivatives: `KernelExpansion.weighted_hessian`),
i.e. the Laplace approximation of the posterior the samplers explore; the
Gauss–Newton (JᵀWJ)⁻¹ where the exact one is not positive definite, with a fitted
rv_resid, and with a robust loss (W its IRLS weights). In physical units.
A spectrum that cannot be fit gets a `StarFit` with a flag and NaN values,
never an exception.

The Laplace approximation is then checked (`slambayes.laplace_check`,
`MapOptions.posterior_draws`): where the posterior is wider than the curvature says
each σ is widened to the sampled one. The same rule serves the catalog, the
out-of-fold fits the error calibration is learned from, and `Posterior.find_map`.
`fit_spectra` then adds the calibration as part of the density (an errors-in-variables
term, see there), with any Gaussian prior, and from the check's draws each star's
posterior summary (`slambayes.posterior_summary`), which sets `laplace_ok`. Start points are the training stars that fit best
(`slambayes.start_points`).

Pixels no model predicts (unflagged cosmic rays, sky residuals) are clipped, as
the SLAM paper's pipeline does: after a fit, a pixel whose raw residual exceeds
`clip_sigma` × its total σ (the diagonal of Σ, scaled by the spectrum's robust
residual scale when that is > 1) is set bad and the star is refit from there,
until the set is stable (at most `clip_iter` times, at most `clip_max_fraction`
of the good pixels). Clipping acts on the raw residuals and re-whitens, so it
works with the correlated model error too; the final fit is an ordinary
least-squares fit on the kept pixels, and the samplers use the same kept
pixels (`StarFit.clipped`), so MAP and posterior are one density. Gaussian noise
exceeds 5σ in 6 of 10⁷ pixels, so clean spectra are not touched.

With `loss="soft_l1"` or `"cauchy"` the pixel residuals (in units of the total
σ) pass through scipy's robust loss; the prior residuals stay quadratic, and
`n_down` counts the pixels whose weight fell below ½.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from .batched_lm import least_squares_batch
from .doppler import DopplerShift
from .laplace_check import check_compression, laplace_check, laplace_verdict
from .likelihood import pixel_weights
from .posterior_summary import Summary, posterior_summary, propose
from .start_points import start_indices

__all__ = ["RV", "FLAGS", "ENGINES", "batch_size", "MapOptions", "StarFit", "fit_star", "fit_stars",
           "fit_spectra", "gaussian_prior_terms", "LOSSES", "outlying_pixels"]

RV = "rv_resid"
ENGINES = ("auto", "batched", "scipy")


def batch_size(n_pix, rank, n_par=4):
    """Stars the batched engine fits together, 16 to 128: as many as keep their noise factors
    ((n_pix, rank + 1) each) within 256 MB and one iteration's flux and Jacobian ((n_pix, 1 + n_par)
    each) within 16 MB. Many stars keep the emulator product at matrix-product speed while the
    slow ones finish; beyond that the passes over the arrays cost more than the product gains
    (measured, spectra/s on one core for 32/64/128/256 stars: 48/54/52/43 on a 7214-px model,
    168/170/180/163 on the 1585-px dwarfsim one)."""
    return int(np.clip(min(2**28 // (8 * n_pix * (rank + 1)), 2**24 // (8 * n_pix * (1 + n_par))), 16, 128))


# bit flags of a fit (the catalog's `flag` column)
FLAGS = {"no_data": 1, "not_converged": 2, "at_edge": 4, "error": 8, "start_unchanged": 128,
         "posterior_unsure": 256}
NOT_GAUSSIAN = " | the posterior is not Gaussian about the MAP"


@dataclass(frozen=True)
class MapOptions:
    """Every setting that changes the density or its fit, from the catalog to the posterior:
    `fit_map`, `Posterior`, `sample` and `fit_map_posterior` take one, `fit_map` writes it to
    its header (MAPOPTS, `to_json`) and `from_header` reads it back, so that a posterior is
    always one of the catalog's density.

    model_error, calibration : the noise model (`slambayes.likelihood.NoiseModel.resolve`)
    bounds_pad : fraction of the training label range added on each side of the box (the
        fit's bounds and the samplers' support)
    clip_sigma : None turns clipping off (the one way to say so)
    The rest are the solver's (see `fit_map`).
    """

    model_error: str = "auto"
    calibration: str = "auto"
    bounds_pad: float = 0.0
    n_starts: int = 1
    method: str = "trf"        # "trf" / "dogbox" (bounded) or "lm" (unbounded)
    max_nfev: int = 100
    edge_tol: float = 1e-3     # fraction of the box counted as "at the edge"
    jac: str = "analytic"      # or "2-point": finite differences, for benchmarks only
    loss: str = "linear"
    f_scale: float = 1.0
    clip_sigma: float = 5.0        # None: no clipping
    clip_iter: int = 3
    clip_max_fraction: float = 0.05
    fit_rv: bool = False           # fit a residual radial velocity `rv_resid` (km/s)
    rv_window: float = 20.0        # |rv_resid| ≤ rv_window km/s
    posterior_draws: int = 128     # importance draws per star: the posterior summaries and the Laplace check (0: neither)
    posterior_budget: float = 6.0  # extra draws a star whose weights fail (k̂ > 0.7) may get, × posterior_draws
    engine: str = "auto"           # `fit_stars`: "batched", "scipy", or "auto" (batched where it applies)

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {self.engine!r}")
        if self.engine == "batched" and not self.batchable:
            raise ValueError("engine='batched' fits the Gaussian likelihood (loss='linear') with the analytic "
                             "Jacobian, method 'trf' (bounded) or 'lm' (unbounded); use engine='scipy' for "
                             f"loss={self.loss!r}, method={self.method!r}, jac={self.jac!r}")
        if self.method not in ("trf", "lm", "dogbox"):
            raise ValueError(f"method must be 'trf', 'dogbox' or 'lm', not {self.method!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, not {self.loss!r}")
        if self.loss != "linear" and self.method == "lm":
            raise ValueError("scipy's method='lm' supports only loss='linear'; use method='trf'")
        if not (np.isfinite(self.f_scale) and self.f_scale > 0):
            raise ValueError(f"f_scale must be a positive number of σ, not {self.f_scale!r}")
        if int(self.n_starts) < 1:
            raise ValueError(f"n_starts must be ≥ 1, not {self.n_starts!r}")
        if self.clip_sigma is not None and not (np.isfinite(self.clip_sigma) and self.clip_sigma > 0):
            raise ValueError(f"clip_sigma must be a positive number of σ or None, not {self.clip_sigma!r}")
        if not 0 <= self.clip_max_fraction < 1:
            raise ValueError(f"clip_max_fraction must be in [0, 1), not {self.clip_max_fraction!r}")
        if int(self.posterior_draws) < 0 or int(self.posterior_draws) % 2:
            raise ValueError(f"posterior_draws must be an even number ≥ 0 (antithetic pairs), not "
                             f"{self.posterior_draws!r}")
        if not (np.isfinite(self.posterior_budget) and self.posterior_budget >= 0):
            raise ValueError(f"posterior_budget must be a number ≥ 0 of posterior_draws, not {self.posterior_budget!r}")
        if not (np.isfinite(self.rv_window) and self.rv_window > 0):
            raise ValueError(f"rv_window must be a positive velocity in km/s, not {self.rv_window!r}")
        if not (np.isfinite(self.bounds_pad) and self.bounds_pad >= 0):
            raise ValueError(f"bounds_pad must be a fraction ≥ 0 of the label range, not {self.bounds_pad!r}")
        from .likelihood import CALIBRATIONS, MODEL_ERRORS
        if self.model_error not in MODEL_ERRORS:
            raise ValueError(f"model_error must be one of {MODEL_ERRORS}, not {self.model_error!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, not {self.calibration!r}")

    def to_json(self):
        """The options as JSON text (the catalog header's MAPOPTS)."""
        import json
        from dataclasses import asdict
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        import json
        d = json.loads(text)
        if "laplace_draws" in d:           # the name before the posterior summaries
            d["posterior_draws"] = d.pop("laplace_draws")
        return cls(**d)

    @classmethod
    def from_header(cls, meta):
        """The options a catalog was written with, from its header (a `Table.meta` or a FITS
        header holding MAPOPTS)."""
        if "MAPOPTS" not in meta:
            raise KeyError("the catalog header has no MAPOPTS card (written by slambayes fit_map since the "
                           "options object): pass the options explicitly")
        return cls.from_json(meta["MAPOPTS"])

    @property
    def batchable(self):
        """Whether the batched engine can fit with these options."""
        return self.loss == "linear" and self.jac == "analytic" and self.method in ("trf", "lm")

    @property
    def batched(self):
        """Whether `fit_stars` uses the batched engine."""
        return self.engine == "batched" or (self.engine == "auto" and self.batchable)

    def parameter_space(self, space):
        """The parameters a fit with these options has: the labels of `space`, then `rv_resid`
        (bounded by ±rv_window, standardized in units of rv_window / 5) when fit_rv."""
        labels = space.labels_only()
        if not self.fit_rv:
            return labels
        return labels.with_nuisance({RV: (-self.rv_window, self.rv_window, 0.0)})


@dataclass
class StarFit:
    """Result of one fit; values/cov in physical units of the label space's labels."""

    values: np.ndarray
    cov: np.ndarray
    cov_model: np.ndarray = None     # the model error's share of `cov` (StarNoise.model_part)
    chi2: float = np.nan
    rchi2: float = np.nan
    share: float = np.nan            # mean fraction of model error in the pixel variance
    norm_ratio: float = np.nan       # median observed / median model flux on the good pixels
    rms: float = np.nan
    nfev: int = 0
    converged: bool = False
    flag: int = 0
    status: str = ""
    n_down: int = 0
    laplace_shift: np.ndarray = None   # (k,) importance-sampled posterior mean − MAP, in Laplace σ
    laplace_width: np.ndarray = None   # (k,) importance-sampled posterior σ / Laplace σ
    widened: bool = False              # `cov` widened to the importance-sampled posterior σ
    laplace_ok: bool = False           # the check ran and found MAP ± σ a fair summary of the posterior
    summary: Summary = None            # the posterior summary (`slambayes.posterior_summary`), physical units
    draws: object = field(default=None, repr=False)   # the check's `Draws`, until the summary is made
    clipped: np.ndarray = field(default_factory=lambda: np.zeros(0, int))   # pixel indices
    cov_formal: np.ndarray = None      # the uncalibrated likelihood's covariance (no prior), physical
    label_cov: np.ndarray = None       # (n, n) the calibration's term Δ (`NoiseModel.label_covariance`)
    anchor: np.ndarray = None          # (n,) the likelihood's MAP φ̂, about which Δ was evaluated

    @property
    def n_clipped(self):
        return int(np.size(self.clipped))

    @classmethod
    def failed(cls, k, flag, status):
        nan = np.full((k, k), np.nan)
        return cls(np.full(k, np.nan), nan, nan, flag=flag, status=status, cov_formal=nan, label_cov=nan)


# ρ(z), ρ'(z), ρ''(z) of scipy's losses, z = (r / f_scale)²
LOSSES = {
    "linear": lambda z: (z, np.ones_like(z), np.zeros_like(z)),
    "soft_l1": lambda z: (2 * (np.sqrt(1 + z) - 1), (1 + z) ** -0.5, -0.5 * (1 + z) ** -1.5),
    "cauchy": lambda z: (np.log1p(z), 1 / (1 + z), -1 / (1 + z) ** 2),
}


def _pixel_loss(kind, n_pix):
    """A scipy loss: `kind` on the first n_pix residuals, quadratic on the rest (the prior's)."""
    rho = LOSSES[kind]

    def loss(z):
        out = np.vstack(LOSSES["linear"](z))
        out[:, :n_pix] = np.vstack(rho(z[:n_pix]))
        return out
    return loss


def gaussian_prior_terms(prior, space):
    """Gaussian priors as residual terms ((index array, mean, L⁻¹), ...); None if not Gaussian."""
    if prior is None:
        return ()
    terms = prior.gaussian_terms() if hasattr(prior, "gaussian_terms") else None
    if terms is None:
        return None
    out = []
    for names, mean, cov in terms:
        missing = [n for n in names if n not in space.label_names]
        if missing:
            raise KeyError(f"prior names label(s) {missing} that the emulator does not have "
                           f"(it has {list(space.label_names)})")
        idx = np.array([space.names.index(n) for n in names])
        out.append((idx, np.atleast_1d(np.asarray(mean, float)), np.linalg.inv(np.linalg.cholesky(np.atleast_2d(cov)))))
    return tuple(out)


class _Problem:
    """Whitened residuals and Jacobian of one spectrum at standardized θ, cached per θ."""

    def __init__(self, emulator, flux, noise, space, prior_terms):
        self.em, self.noise, self.space, self.terms = emulator, noise, space, prior_terms
        self.doppler = DopplerShift(emulator.wave_) if RV in space.names else None
        self.good = noise.good          # the residuals cover these; clipped pixels whiten to 0
        self.flux = np.where(self.good, flux, 0.0)
        self._theta = None

    def use(self, noise):
        """Whiten with `noise` (the same spectrum with pixels clipped) from now on."""
        self.noise, self._theta = noise, None

    def eval(self, theta):
        """(whitened residuals, their Jacobian) at standardized θ (n,), the emulator called here."""
        if self._theta is None or not np.array_equal(theta, self._theta):
            k = self.space.n_labels
            self.take(theta, *self.em.predict_and_jacobian(self.space.from_std(theta)[:k]))
        return self._r, self._J

    def take(self, theta, f, J):
        """`eval` at θ from the emulator's flux (n_pix,) and Jacobian (n_pix, k) there, physical
        units, computed elsewhere (a batch of stars in one product); cached as `eval` caches."""
        k = self.space.n_labels
        params = self.space.from_std(theta)
        J = J * self.space.scale[:k]
        if self.doppler is not None:
            f, J, df_dv = self.doppler.shift_and_derivatives(f, J, params[k])
            J = np.column_stack([J, df_dv * self.space.scale[k]])
        self.resid = np.where(self.good, self.flux - f, 0.0)
        rs = [self.noise.whiten(self.resid)]
        js = [self.noise.whiten(-J)]
        for idx, mean, L_inv in self.terms:
            rs.append(L_inv @ (params[idx] - mean))
            jp = np.zeros((len(idx), theta.size))
            jp[:, idx] = L_inv * self.space.scale[idx][None, :]
            js.append(jp)
        self._theta, self._r, self._J = np.array(theta, float), np.concatenate(rs), np.vstack(js)
        return self._r, self._J

    def objective(self, thetas):
        """½‖Σ^(−½) r‖² plus the prior terms at standardized parameters (m, n): the fit's
        objective, −ln posterior up to a constant; flux only, all m in one product."""
        k = self.space.n_labels
        params = self.space.from_std(np.atleast_2d(thetas))
        if hasattr(self.em, "expansion_at"):
            f = self.em.predict(params[:, :k], compression=check_compression(self.em), single=True)
        elif hasattr(self.em, "predict"):
            f = np.atleast_2d(self.em.predict(params[:, :k]))
        else:
            f = np.array([self.em.predict_and_jacobian(p[:k])[0] for p in params])
        if self.doppler is not None:
            f = np.array([self.doppler.shift(fi, v) for fi, v in zip(f, params[:, k])])
        # in the flux's precision: float32 from the summaries' low-rank expansion (the sum of
        # squares of whitened residuals is then good to ~1e-5 of χ², far below what a weight needs)
        r = np.where(self.good, self.flux.astype(f.dtype, copy=False) - f, 0.0)
        out = np.sum(self.noise.whiten(r.T) ** 2, 0, dtype=float)
        for idx, mean, L_inv in self.terms:
            out = out + np.sum((L_inv @ (params[:, idx] - mean).T) ** 2, 0)
        return 0.5 * out

    def curvature_weights(self, theta):
        """Σ⁻¹ r (n_pix,) at standardized θ, the pixel weights of the curvature term; None where
        there is none to compute: an emulator without `flux_curvature` (a linear one has none)
        and, for now, a fitted rv_resid (whose shift has no second derivative here)."""
        if getattr(self.em, "flux_curvature", None) is None or self.doppler is not None:
            return None
        self.eval(theta)
        return self.noise.whiten_T(self.noise.whiten(self.resid))


def curvatures(probs, thetas):
    """Σ_p (Σ⁻¹ r)_p ∂²f_p/∂θ² (n, n) of each problem at its standardized θ: what the
    Gauss–Newton Hessian JᵀΣ⁻¹J leaves out of the exact one (zero where `curvature_weights`
    is None). Problems of one emulator and label space; all in one emulator product."""
    n = len(thetas[0]) if len(thetas) else 0
    out = [np.zeros((n, n)) for _ in probs]
    u = [p.curvature_weights(t) for p, t in zip(probs, thetas)]
    idx = [i for i, w in enumerate(u) if w is not None]
    if idx:
        space, k = probs[idx[0]].space, probs[idx[0]].space.n_labels
        labels = np.array([space.from_std(thetas[i])[:k] for i in idx])
        H = probs[idx[0]].em.flux_curvature(labels, np.array([u[i] for i in idx]))
        scale = space.scale[:k]
        for j, i in enumerate(idx):
            out[i][:k, :k] = H[j] * np.outer(scale, scale)
    return out


def _check_space(space, options):
    if (RV in space.names) != bool(options.fit_rv) or len(space.names) != space.n_labels + int(options.fit_rv):
        raise ValueError(f"the parameter space {space.names} is not the one of these options; "
                         f"use options.parameter_space(space)")


def fit_star(emulator, flux, noise, space, starts, options=MapOptions(), prior_terms=()):
    """MAP labels of one spectrum.

    emulator : object with `predict_and_jacobian(labels (k,)) → (flux (n_pix,), J (n_pix, k))`
        and `wave_`
    flux : (n_pix,); noise : `StarNoise`
    space : `LabelSpace` of the fit's parameters, `options.parameter_space(...)`: the labels,
        then `rv_resid` when options.fit_rv
    starts : (n_start, k) starting labels, physical units (rv_resid starts at 0)
    Returns a `StarFit` (values, cov over all parameters of `space`).
    """
    _check_space(space, options)
    k = len(space.names)
    n_good = noise.n_good
    if n_good <= k:
        return StarFit.failed(k, FLAGS["no_data"], f"only {n_good} good pixel(s) for {k} parameters")
    try:
        return _fit(emulator, flux, noise, space, starts, options, prior_terms)
    except Exception as exc:  # one bad spectrum must not stop a batch
        return StarFit.failed(k, FLAGS["error"], f"{type(exc).__name__}: {exc}")


def fit_stars(emulator, flux, noises, space, starts, options=MapOptions(), prior_terms=()):
    """`fit_star` for a chunk of spectra: flux (m, n_pix), noises (m,) `StarNoise`, starts (m,)
    arrays (n_start, k). With the batched engine (`options.batched`), every iteration of every
    star's fit and every clipping round share one emulator evaluation (`slambayes.batched_lm`);
    otherwise, and for any star the batch could not take, `fit_star` one at a time. The
    emulator must say it evaluates a batch of label vectors (`evaluates_batches`, as `Emulator`
    does); others are fitted one at a time. Returns a list of m `StarFit`s."""
    m = len(flux)
    if not (options.batched and getattr(emulator, "evaluates_batches", False)):
        return [fit_star(emulator, flux[i], noises[i], space, starts[i], options, prior_terms) for i in range(m)]
    _check_space(space, options)
    out = [None] * m
    probs, x0s = {}, {}
    for i in range(m):
        if noises[i].n_good <= len(space.names):
            out[i] = fit_star(emulator, flux[i], noises[i], space, starts[i], options, prior_terms)
        else:
            probs[i], x0s[i] = _Problem(emulator, flux[i], noises[i], space, prior_terms), _starts_std(space, starts[i])
    try:
        best = _solve_batch(emulator, space, probs, x0s, options)
    except Exception:  # noqa: BLE001  a batch the engine could not take is fitted star by star
        best = {}
    start = {i: x0 for i, (_, x0) in best.items()}      # the first fit's start, as `fit_star` keeps it
    best = {i: sol for i, (sol, _) in best.items()}
    nfev = {i: b.nfev for i, b in best.items()}
    clipped = {i: np.zeros(flux.shape[1], bool) for i in best}
    kept = {i: noises[i] for i in best}
    pending = list(best)
    for _ in range(options.clip_iter if options.clip_sigma is not None else 0):
        redo = {}
        for i in pending:
            _restore(probs[i], best[i])
            more = _clip_more(probs[i], best[i].x, noises[i], clipped[i], options)
            if more is not None:
                clipped[i], kept[i] = more
                probs[i].use(kept[i])
                redo[i] = [best[i].x] + x0s[i]
        if not redo:
            break
        try:
            again = _solve_batch(emulator, space, {i: probs[i] for i in redo}, redo, options)
        except Exception:  # noqa: BLE001
            again = {}
        for i in redo:
            if i in again:
                best[i] = again[i][0]
                nfev[i] += best[i].nfev
            else:
                best.pop(i)
        pending = list(again)
    done = [i for i in best if out[i] is None]
    curv = {}
    try:
        for i in done:
            _restore(probs[i], best[i])
        curv = dict(zip(done, curvatures([probs[i] for i in done], [best[i].x for i in done])))
    except Exception:  # noqa: BLE001  then each star computes its own in `_finish`
        pass
    for i in range(m):
        if out[i] is not None:
            continue
        if i not in best:
            out[i] = fit_star(emulator, flux[i], noises[i], space, starts[i], options, prior_terms)
            continue
        try:
            out[i] = _finish(probs[i], flux[i], best[i], start[i], nfev[i], clipped[i], kept[i], options,
                             curv.get(i))
        except Exception as exc:  # noqa: BLE001  one bad spectrum must not stop a batch
            out[i] = StarFit.failed(len(space.names), FLAGS["error"], f"{type(exc).__name__}: {exc}")
    return out


def fit_spectra(emulator, flux, ivar, noise, space, starts, options=MapOptions(), prior_terms=(), checks=None,
                summaries=True):
    """The MAP of the density of `noise` (× the Gaussian `prior_terms`) for spectra flux, ivar
    (n, n_pix): what the catalog reports and the samplers start from, the after-fit steps
    (calibration, fit checks) written once for both.

    Each star is first fitted by `fit_stars`, started at the `options.n_starts` training stars
    whose model spectra fit it best (`start_indices`), `batch_size` spectra at a time (memory
    holds one batch's noise factors). With a calibrated noise model that fit is of the
    likelihood alone, and it is the calibration's anchor: its covariance, model-error share,
    χ²_ν and position give the errors-in-variables term Δ (`NoiseModel.label_covariance`).
    The calibrated likelihood p(f | θ) = ∫ p(f | θ + δ) N(δ; 0, Δ) dδ has, in the Laplace form
    of p(f | φ) (a Gaussian about the anchor φ̂ with the fit's covariance), the Gaussian
    N(θ; φ̂, cov + Δ): without a prior the anchor with covariance cov + Δ, with a Gaussian
    prior its product with the prior inside the box (`gaussian_product`), Bayes exactly. The
    samplers explore the same density without the Laplace form (`slambayes.posterior`).
    Without a calibration the prior's residuals enter the least squares directly.

    summaries : give each fit its posterior summary of that density (`StarFit.summary`,
    `slambayes.posterior_summary`, from the Laplace check's draws: `options.posterior_draws`),
    which sets `laplace_ok`; the out-of-fold fits of the calibration need none.

    Each `StarFit` holds the density's MAP and `cov`, the uncalibrated likelihood's
    `cov_formal` and `label_cov` Δ; χ², χ²_ν, the model share, the Laplace check and the
    clipped pixels are the fit's. checks : `slambayes.fit_checks.FitChecks` or None, its flag
    bits added to each fit's.
    starts : (labels (n_train, k), model spectra (n_train, n_pix)), the start candidates.
    Returns (list of n `StarFit`, start indices (n, n_starts))."""
    idx0 = start_indices(starts[1], np.where(ivar > 0, flux, 0.0), pixel_weights(ivar, noise.sigma_model),
                         options.n_starts, options.clip_sigma)
    anchor_terms = () if noise.calibrated else prior_terms
    noises, first = [noise.star(iv) for iv in ivar], [starts[0][i] for i in idx0]
    fits, step = [], batch_size(flux.shape[1], noise.rank, len(space.names))
    for a in range(0, flux.shape[0], step):
        batch = fit_stars(emulator, flux[a:a + step], noises[a:a + step], space, first[a:a + step], options,
                          anchor_terms)
        _add_calibration(batch, noise, space, prior_terms)
        if summaries:
            _summarize(batch, noise, space, prior_terms, options)
        for f in batch:
            f.draws = None          # the draws (and the problem they evaluate) are a batch's only
        fits += batch
    k = space.n_labels
    if checks is not None and len(fits):
        quality = np.array([[f.rchi2, f.share] for f in fits]).reshape(-1, 2)
        theta_std = space.to_std(np.array([f.values[:k] for f in fits]))
        sigma_std = np.sqrt(np.array([np.diag(f.cov)[:k] for f in fits])) / space.scale[:k]
        bits = checks.flags(theta_std, quality, [f.norm_ratio for f in fits], sigma_std)
        for f, b in zip(fits, bits):
            f.flag = int(f.flag) | int(b)
    return fits, idx0


def _add_calibration(fits, noise, space, prior_terms):
    """The calibration's term Δ of each fit (about its likelihood-only MAP, the anchor), added to
    its covariance, and, for a calibrated noise model, any Gaussian prior multiplied in."""
    k, n = space.n_labels, len(space.names)
    cov = np.array([f.cov for f in fits]).reshape(-1, n, n)
    values = np.array([f.values for f in fits]).reshape(-1, n)
    quality = np.array([[f.rchi2, f.share] for f in fits]).reshape(-1, 2)
    theta_std = space.to_std(values[:, :k]) if len(fits) else np.zeros((0, k))
    cov_model = np.array([f.cov_model[:k, :k] for f in fits]).reshape(-1, k, k)
    delta = noise.label_covariance(cov, cov_model, theta_std, quality)
    for f, d in zip(fits, delta):
        f.cov_formal, f.label_cov = f.cov, d
        f.cov = f.cov + d
        f.anchor = f.values
        if noise.calibrated and prior_terms and np.all(np.isfinite(f.values)) and np.all(np.isfinite(f.cov)):
            f.values, f.cov = gaussian_product(f.values, f.cov, prior_terms, space)
            f.status += " | with the Gaussian prior (Laplace form of the calibrated likelihood)"


def prior_in_std(prior_terms, space):
    """Gaussian prior terms ((idx, μ, L⁻¹), … physical) as A θ_std ~ N(b, I): (A (q, n), b (q,)),
    or None without terms."""
    if not prior_terms:
        return None
    A, b = [], []
    for idx, mu, L_inv in prior_terms:
        rows = np.zeros((len(idx), len(space.names)))
        rows[:, idx] = L_inv * space.scale[idx][None, :]
        A.append(rows)
        b.append(L_inv @ (mu - space.loc[idx]))
    return np.vstack(A), np.concatenate(b)


def _summarize(fits, noise, space, prior_terms, options):
    """Each fit's posterior summary (`slambayes.posterior_summary`) of the catalog's density from
    its check's draws: laplace_ok from it (the calibrated MAP ± σ against the summary's mean and
    σ, by `LAPLACE_LIMITS`), and the flag `posterior_unsure` where the budget did not give
    trustworthy weights. A fit without draws (failed, robust loss) gets an empty summary."""
    from .laplace_check import within_limits

    n = len(space.names)
    # without a calibration the fit's own objective holds the prior already
    prior = prior_in_std(prior_terms, space) if noise.calibrated else None
    scale2 = np.outer(space.scale, space.scale)
    for f in fits:
        if f.draws is None or not (np.all(np.isfinite(f.label_cov)) and np.all(np.isfinite(f.cov))):
            f.summary = Summary.none(n)
            continue
        laplace = (space.to_std(f.values), np.sqrt(np.diag(f.cov)) / space.scale)
        try:
            s = posterior_summary(f.draws, f.draws.evaluate, f.draws.center, f.draws.cov, f.label_cov / scale2,
                                  prior, space, int(options.posterior_draws), float(options.posterior_budget),
                                  laplace=laplace)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            # one star's summary must not stop a batch: its row keeps the MAP and says why
            f.summary = Summary.none(n)
            f.status += f" | no posterior summary ({type(exc).__name__}: {exc})"
            continue
        f.summary = s
        sd = np.sqrt(np.diag(f.cov))
        shift, width = (s.mean - f.values) / sd, s.std / sd
        f.laplace_ok = s.method != "unreliable" and within_limits(shift, width)
        f.status = f.status.replace(NOT_GAUSSIAN, "") + ("" if f.laplace_ok else NOT_GAUSSIAN + ": read its summary")
        if s.method == "unreliable":
            f.flag = int(f.flag) | FLAGS["posterior_unsure"]
            f.status += f" | posterior summary unreliable (k̂ {s.khat:.2f} after {s.n_draws} draws): sample it"


def gaussian_product(mean, cov, prior_terms, space):
    """The MAP and covariance of N(θ; mean, cov) × the Gaussian prior terms ((idx, μ, L⁻¹), …:
    `gaussian_prior_terms`) inside the box of `space`, physical units: bounded linear least
    squares on the whitened residuals (scipy's `lsq_linear`), covariance the inverse of its
    normal matrix. Returns (values (n,), cov (n, n))."""
    from scipy.optimize import lsq_linear

    mean, cov = np.asarray(mean, float), np.asarray(cov, float)
    n, scale = mean.size, space.scale
    # in x = θ / scale (each parameter in units of its training spread), so that the rows are alike
    W = np.linalg.inv(np.linalg.cholesky(cov / np.outer(scale, scale)))
    rows, rhs = [W], [W @ (mean / scale)]
    for idx, mu, L_inv in prior_terms:
        A = np.zeros((len(idx), n))
        A[:, idx] = L_inv * scale[idx][None, :]
        rows.append(A)
        rhs.append(L_inv @ mu)
    A, b = np.vstack(rows), np.concatenate(rhs)
    x = lsq_linear(A, b, bounds=(space.low / scale, space.high / scale), method="bvls").x
    return x * scale, np.linalg.inv(A.T @ A) * np.outer(scale, scale)


def _restore(prob, best):
    """Set `prob` at the solution `best` from the emulator output the solver kept."""
    if prob._theta is None or not np.array_equal(prob._theta, best.x):
        prob.take(best.x, *best.state)


def _solve_batch(emulator, space, probs, x0s, options):
    """Every start of every star in `probs` ({i: _Problem}) solved together from x0s ({i: list
    of standardized starts}) → {i: (`Solution`, its start)}, the lowest cost over each star's
    starts (as `_solve` does for one star)."""
    if not probs:
        return {}
    owner = [i for i in probs for _ in x0s[i]]
    X0 = np.array([x for i in probs for x in x0s[i]])
    k = space.n_labels

    def residuals(idx, X):
        params = space.from_std(X)
        f, J = emulator.predict_and_jacobian(params[:, :k])
        out = []
        for j, p in enumerate(idx):
            r, Jw = probs[owner[p]].take(X[j], f[j], J[j])
            out.append((r, Jw, (f[j], J[j])))
        return out

    lo, hi = (space.low_std, space.high_std) if options.method != "lm" else (-np.inf, np.inf)
    X0 = np.clip(X0, space.low_std + 1e-9, space.high_std - 1e-9)
    sols = least_squares_batch(residuals, X0, lo, hi, max_nfev=options.max_nfev)
    best = {}
    for p, (i, sol) in enumerate(zip(owner, sols)):
        if i not in best or sol.cost < best[i][0].cost:
            best[i] = (sol, X0[p])
    for i, (sol, _) in best.items():
        sol.others = _other_minima(sol, [s for s, o in zip(sols, owner) if o == i])
    return best


# a start's minimum counts as another mode of the posterior when its ½χ² is within this of the best
MODE_COST = 12.5


def _other_minima(best, sols):
    """The points (standardized) of the solutions other than `best` whose cost lies within
    MODE_COST of its: candidate second modes for the posterior summary (`_finish` keeps those
    far from the MAP)."""
    return [np.array(s.x, float) for s in sols if s is not best and s.cost < best.cost + MODE_COST]


def _solve(prob, starts, options):
    """Best least-squares result over `starts` (standardized) → (result, its start)."""
    lo, hi = prob.space.low_std, prob.space.high_std
    kw = dict(jac=(lambda t: prob.eval(t)[1]) if options.jac == "analytic" else options.jac,
              x_scale="jac", max_nfev=options.max_nfev)
    if options.loss != "linear":
        kw.update(loss=_pixel_loss(options.loss, prob.flux.size), f_scale=options.f_scale)
    if options.method != "lm":
        kw["bounds"] = (lo, hi)
    best, sols = None, []
    for x0 in starts:
        x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
        res = least_squares(lambda t: prob.eval(t)[0], x0, method=options.method, **kw)
        sols.append(res)
        if best is None or res.cost < best.cost:
            best, best_x0 = res, x0
    best.others = _other_minima(best, sols)
    return best, best_x0


def outlying_pixels(resid, noise, options):
    """Boolean mask of the pixels to clip, from raw residuals (n_pix,) on `noise.good`:
    |r| > clip_sigma · max(1, robust scale) · total σ, the largest clip_max_fraction at most."""
    g = noise.good
    z = np.abs(resid) * np.sqrt(noise.weights)
    scale = max(1.0, 1.4826 * float(np.median(z[g])))
    out = g & (z > options.clip_sigma * scale)
    cap = int(options.clip_max_fraction * g.sum())
    if out.sum() > cap:
        keep = np.argsort(np.where(out, -z, 0.0))[:cap]
        out = np.zeros_like(out)
        out[keep] = True
    return out


def _inverse(H):
    try:
        return np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(H)


def _starts_std(space, starts):
    """The starting points (n_start, n) in standardized units; nuisances start at their centre."""
    nuisance0 = space.loc[space.n_labels:]
    return [space.to_std(np.r_[x, nuisance0]) for x in np.atleast_2d(starts)]


def _clip_more(prob, theta, noise, clipped, options):
    """After a fit at θ: (the pixels to clip, the noise without them), or None where the set
    is stable (or clipping would leave too few pixels)."""
    prob.eval(theta)
    new = outlying_pixels(prob.resid, noise, options)
    if np.array_equal(new, clipped) or noise.n_good - new.sum() <= len(prob.space.names):
        return None
    return new, noise.without(new)


def _fit(emulator, flux, noise, space, starts, options, prior_terms):
    prob = _Problem(emulator, flux, noise, space, prior_terms)
    x0s = _starts_std(space, starts)
    best, best_x0 = _solve(prob, x0s, options)
    nfev = best.nfev
    clipped = np.zeros(flux.size, bool)
    kept = noise
    for _ in range(options.clip_iter if options.clip_sigma is not None else 0):
        more = _clip_more(prob, best.x, noise, clipped, options)
        if more is None:
            break
        clipped, kept = more
        prob.use(kept)
        # from where the spikes had pulled it and from the original starts: the first fit may
        # have fallen into another basin
        best, _ = _solve(prob, [best.x] + x0s, options)
        nfev += best.nfev
    return _finish(prob, flux, best, best_x0, nfev, clipped, kept, options)


def _distinct_modes(theta, cov_std, others):
    """The other starts' minima farther than 3 Laplace σ (Mahalanobis) from the MAP θ and from
    each other: the posterior's other modes, which its summary samples too."""
    P = np.linalg.inv(cov_std)
    modes = []
    for x in others:
        if all((x - y) @ P @ (x - y) > 9.0 for y in [theta] + modes):
            modes.append(x)
    return modes


def _finish(prob, flux, best, best_x0, nfev, clipped, kept, options, curvature=None):
    """The `StarFit` of a solved star: covariance (exact Hessian), the Laplace check, flags.
    curvature : the `curvatures` term at best.x, if computed already (with other stars')."""
    space = prob.space
    k = len(space.names)
    n_pix = flux.size
    theta = best.x
    r, J = prob.eval(theta)
    w = np.ones(r.size)
    w[:n_pix] = LOSSES[options.loss]((r[:n_pix] / options.f_scale) ** 2)[1]
    G = J.T @ (w[:, None] * J)
    cov_gn = _inverse(G)
    cov_std, cov_model = cov_gn, kept.model_part(J[:n_pix], cov_gn)
    if options.loss == "linear":
        # the exact Hessian of the density the samplers explore, so that the catalog's
        # covariance is its Laplace approximation; Gauss–Newton where that is not positive
        # definite (a fit stopped short of a minimum, at the box's edge)
        exact = G - (curvatures([prob], [theta])[0] if curvature is None else curvature)
        if np.all(np.linalg.eigvalsh(exact) > 1e-10 * np.trace(G)):
            try:
                # the shares of noise and model error are Gauss–Newton's (they add up to its
                # covariance), carried to the exact covariance by the map T with T cov_gn Tᵀ = cov
                cov_exact = _inverse(exact)
                T = np.linalg.cholesky(cov_exact) @ np.linalg.inv(np.linalg.cholesky(cov_gn))
                cov_std, cov_model = cov_exact, T @ cov_model @ T.T
            except np.linalg.LinAlgError:
                pass
    chi2 = float(r[:n_pix] @ r[:n_pix])
    shift = width = np.full(k, np.nan)
    widened, gaussian, draws = False, False, None
    checked = bool(options.posterior_draws) and options.loss == "linear"
    if checked:
        phi0 = 0.5 * float(np.sum(r ** 2))          # the fit's own residuals: log weights near 0

        def evaluate(points):
            return phi0 - prob.objective(points)
        draws = propose(evaluate, theta, cov_std, int(options.posterior_draws),
                        cap=0.5 * (space.high_std - space.low_std))
        draws.modes = _distinct_modes(theta, cov_std, getattr(best, "others", []))
        shift, width = laplace_check(draws, theta, cov_std, space)
        reported, widened, gaussian = laplace_verdict(shift, width)
        cov_std, cov_model = cov_std * np.outer(reported, reported), cov_model * np.outer(reported, reported)
    values = space.from_std(theta)
    edge = bool(space.at_edge(values, options.edge_tol))
    # a solver that never moved (flux off by orders of magnitude, a flat χ² surface) says "converged"
    unchanged = bool(np.allclose(theta, best_x0, rtol=0, atol=1e-10))
    flag = (0 if best.success else FLAGS["not_converged"]) | (FLAGS["at_edge"] if edge else 0) | \
        (FLAGS["start_unchanged"] if unchanged else 0)
    good = kept.good
    model = flux - prob.resid
    return StarFit(values=values, cov=space.cov_to_phys(cov_std), cov_model=space.cov_to_phys(cov_model), chi2=chi2,
                   rchi2=chi2 / max(kept.n_good - k, 1),
                   rms=float(np.sqrt(np.mean(prob.resid[good] ** 2))), nfev=int(nfev),
                   converged=bool(best.success), flag=flag,
                   status=best.message + (" | at the edge of the training label range" if edge else "")
                   + (" | the solver did not move from its start" if unchanged else "")
                   + (NOT_GAUSSIAN if checked and not gaussian else ""),
                   laplace_shift=shift, laplace_width=width, widened=widened, laplace_ok=gaussian, draws=draws,
                   n_down=int((w[:n_pix][good] < 0.5).sum()), share=kept.model_share,
                   norm_ratio=float(np.median(flux[good]) / np.median(model[good])),
                   clipped=np.flatnonzero(clipped))
