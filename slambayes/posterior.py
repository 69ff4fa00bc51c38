"""The log posterior of one star: Eq. 8 + prior, in jax, shared by MAP, NUTS and emcee.

Parameters live in standardized units, θ_std = (θ − loc)/scale: the emulator's
labels (loc, scale = training mean, std) followed by any nuisance parameters a
prior asks for (e.g. "mass" for `Parallax`). Each parameter has a box support:
the training label range (padded by `support_pad` × span) intersected with the
prior's own support, and a nuisance parameter's declared range. The numpyro
model draws θ_std from that box, so NUTS works in the unconstrained space of
numpyro's interval bijection and never leaves the support; emcee evaluates
exactly the same potential (`numpyro.infer.util.potential_energy`).

A prior is any object with `label_names` and a jax `log_prob(values)`
(values (..., len(label_names)) in physical units); `nuisance` and `support()`
are optional (see `slambayes.priors.Prior`).
"""
from __future__ import annotations

import numpy as np

from .likelihood import log_norm, pixel_weights

__all__ = ["Posterior", "fit_map_posterior"]


def _prior_attr(prior, name, default):
    value = getattr(prior, name, default) if prior is not None else default
    return value() if callable(value) else value


class Posterior:
    """Log posterior of the labels of one spectrum for an emulator and a prior.

    Parameters
    ----------
    emulator : fitted `Emulator` (or any object with `label_names_`, `label_mean_`,
        `label_std_`, `label_min_`, `label_max_`, `wave_`, `model_error(kind)` and
        `jax_predictor()`)
    prior : a prior (see module docstring) or None (flat inside the support)
    model_error : "cv" | "cv_minus_noise" | "none", see `Emulator.model_error`
    support_pad : fraction of the training range added on each side of the support

    Attributes
    ----------
    names : labels then nuisance parameters; n_labels : number of emulator labels
    loc, scale, low, high : (n_par,) physical units
    """

    def __init__(self, emulator, prior=None, model_error="cv", support_pad=0.0):
        import numpyro
        numpyro.enable_x64()

        if model_error == "correlated":
            raise ValueError("the posterior samples Eq. 8 with independent pixel errors: use "
                             "model_error='cv' (or 'cv_minus_noise', 'none'); 'correlated' is "
                             "available in fit_map")
        self.emulator, self.prior, self.model_error = emulator, prior, model_error
        labels = tuple(emulator.label_names_)
        nuisance = {n: tuple(v) for n, v in dict(_prior_attr(prior, "nuisance", {})).items()
                    if n not in labels}
        self.names = labels + tuple(nuisance)
        self.n_labels = len(labels)
        prior_names = tuple(_prior_attr(prior, "label_names", ()))
        missing = [n for n in prior_names if n not in self.names]
        if missing:
            raise KeyError(f"prior {type(prior).__name__} needs label(s) {missing}, which the emulator "
                           f"does not have (it has {list(labels)}) and which are not declared nuisance "
                           f"parameters")
        self._prior_idx = np.array([self.names.index(n) for n in prior_names], int)

        span = emulator.label_max_ - emulator.label_min_
        low = list(emulator.label_min_ - support_pad * span)
        high = list(emulator.label_max_ + support_pad * span)
        loc, scale = list(emulator.label_mean_), list(emulator.label_std_)
        for lo_hi in nuisance.values():
            lo, hi = lo_hi[0], lo_hi[1]
            low.append(lo), high.append(hi)
            loc.append(lo_hi[2] if len(lo_hi) > 2 else 0.5 * (lo + hi)), scale.append((hi - lo) / 10)
        for name, (lo, hi) in _prior_attr(prior, "support", {}).items():
            if name in self.names:
                i = self.names.index(name)
                low[i], high[i] = max(low[i], lo), min(high[i], hi)
        self.low, self.high = np.array(low, float), np.array(high, float)
        if np.any(self.high <= self.low):
            bad = [n for n, a, b in zip(self.names, self.low, self.high) if b <= a]
            raise ValueError(f"the prior's support does not overlap the training range for {bad}")
        self.loc, self.scale = np.array(loc, float), np.array(scale, float)
        self.low_std, self.high_std = self.to_std(self.low), self.to_std(self.high)
        self.sigma_model = np.asarray(emulator.model_error(model_error), float)
        self._predict = emulator.jax_predictor()
        self._cache = {}

    # ------------------------------------------------------------- units
    def to_std(self, values):
        return (np.asarray(values, float) - self.loc) / self.scale

    def from_std(self, theta):
        return self.loc + self.scale * theta

    # -------------------------------------------------------------- data
    def data(self, spectrum):
        """(flux, weights, norm) for one star of a `Spectra` on the emulator's grid."""
        from .map_fit import check_grid

        if spectrum.n_star != 1:
            raise ValueError(f"sample one star at a time: got {spectrum.n_star} spectra; "
                             f"select one with spectra[i]")
        check_grid(self.emulator, spectrum)
        w = pixel_weights(spectrum.ivar[0], self.sigma_model)
        n_good = int((w > 0).sum())
        if n_good <= self.n_labels:
            raise ValueError(f"star {_star_id(spectrum)}: only {n_good} good pixel(s)")
        flux = np.where(w > 0, spectrum.flux[0], 0.0)
        return flux, w, float(log_norm(w))

    # ----------------------------------------------------- jax densities
    def log_likelihood(self, params, flux, weights, norm):
        """Eq. 8 for physical parameters (..., n_par) → (...)."""
        import jax.numpy as jnp
        from .likelihood import log_likelihood

        model = self._predict(params[..., :self.n_labels])
        return log_likelihood(flux, model, weights, norm, xp=jnp)

    def log_prior(self, params):
        if self.prior is None:
            return 0.0
        return self.prior.log_prob(params[..., self._prior_idx])

    def log_prob_std(self, theta, flux, weights, norm):
        """log likelihood + log prior at standardized parameters θ (..., n_par)."""
        params = self.loc + self.scale * theta
        return self.log_likelihood(params, flux, weights, norm) + self.log_prior(params)

    def model(self, flux, weights, norm):
        """The numpyro model: θ_std uniform on the support box, Eq. 8 and the prior as factors."""
        import numpyro
        import numpyro.distributions as dist

        theta = numpyro.sample("theta", dist.Uniform(self.low_std, self.high_std).to_event(1))
        params = self.loc + self.scale * theta
        numpyro.factor("log_likelihood", self.log_likelihood(params, flux, weights, norm))
        if self.prior is not None:
            numpyro.factor("log_prior", self.log_prior(params))

    def _interval(self):
        from numpyro.distributions import constraints
        from numpyro.distributions.transforms import biject_to
        return biject_to(constraints.interval(self.low_std, self.high_std))

    def to_unconstrained(self, theta_std):
        return np.asarray(self._interval().inv(np.asarray(theta_std)))

    def from_unconstrained(self, u):
        return np.asarray(self._interval()(u))

    def _jitted(self, name, make):
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    # ---------------------------------------------------------------- MAP
    def is_gaussian(self):
        """True when the LM fit with Gaussian residuals is the exact MAP of this posterior."""
        if self.prior is None:
            return len(self.names) == self.n_labels
        return self.prior.gaussian_terms() is not None if hasattr(self.prior, "gaussian_terms") else False

    def find_map(self, spectrum):
        """MAP and Laplace covariance of one star → dict(names, values, cov, method, converged, message).

        Without a prior or with a Gaussian one this is the Levenberg–Marquardt/TRF
        fit of `fit_map` and its (JᵀJ)⁻¹ covariance. Other priors start from that
        fit and maximize the full log posterior with L-BFGS-B on jax gradients;
        the covariance is the inverse jax Hessian of −log posterior.
        """
        import jax
        from scipy.optimize import minimize

        flux, w, norm = self.data(spectrum)
        k = self.n_labels
        lm = None
        if hasattr(self.emulator, "expansion"):
            from .map_fit import fit_map
            # loss="linear": the density sampled here is Eq. 8 itself, so its MAP is too
            lm = fit_map(self.emulator, spectrum, prior=self.prior if self.is_gaussian() else None,
                         model_error=self.model_error, loss="linear", progress=False)[0]
            start = np.array([lm[n] for n in self.names[:k]], float)
            if self.is_gaussian() and np.all(np.isfinite(start)):
                return dict(names=self.names, values=start, cov=np.array(lm["cov"], float), method="LM",
                            converged=bool(lm["converged"]), message=str(lm["status"]))
        else:
            start = self.loc[:k]
        x0 = self.to_std(np.r_[start, self.loc[k:]])
        x0 = np.clip(np.nan_to_num(x0), self.low_std + 1e-6, self.high_std - 1e-6)

        def make():
            f = jax.jit(jax.value_and_grad(lambda t, *d: -self.log_prob_std(t, *d)))
            h = jax.jit(jax.hessian(lambda t, *d: -self.log_prob_std(t, *d)))
            return f, h
        vg, hess = self._jitted("map", make)

        def fun(t):
            v, g = vg(t, flux, w, norm)
            return float(v), np.asarray(g, float)
        eps = 1e-9 * (self.high_std - self.low_std)
        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       bounds=list(zip(self.low_std + eps, self.high_std - eps)))
        H = np.asarray(hess(res.x, flux, w, norm), float)
        try:
            cov_std = np.linalg.inv(H)
            ok = bool(np.all(np.linalg.eigvalsh(H) > 0))
        except np.linalg.LinAlgError:
            cov_std, ok = np.linalg.pinv(H), False
        msg = str(res.message) + ("" if ok else " | Hessian not positive definite")
        return dict(names=self.names, values=self.from_std(res.x), cov=cov_std * np.outer(self.scale, self.scale),
                    method="L-BFGS-B", converged=bool(res.success and ok), message=msg)


def _star_id(spectrum):
    meta = getattr(spectrum, "meta", None)
    if meta is not None and "id" in getattr(meta, "colnames", ()):
        return str(meta["id"][0])
    return "0"


def fit_map_posterior(emulator, spectra, prior=None, model_error="cv", support_pad=0.0, progress=True):
    """MAP of the full log posterior (any prior) for each spectrum → astropy Table.

    Use it for priors that `fit_map` cannot take as Gaussian residuals (Parallax,
    GalacticModel, TrainingDensity, …). Slower than `fit_map` (one jax optimization
    per star); meant for chosen stars. Columns: one per parameter (labels, then
    nuisance parameters) and `<name>_err`, `cov` (n_par, n_par), `converged`,
    `method`, `status`. A star that fails gets NaN values and its error in `status`.
    """
    from astropy.table import Table
    from tqdm.auto import tqdm

    post = Posterior(emulator, prior, model_error, support_pad)
    n = len(post.names)
    rows = []
    for i in tqdm(range(spectra.n_star), disable=not progress, desc="MAP (posterior)"):
        try:
            r = post.find_map(spectra[i:i + 1])
        except (ValueError, np.linalg.LinAlgError) as exc:
            r = dict(values=np.full(n, np.nan), cov=np.full((n, n), np.nan), method="",
                     converged=False, message=f"error: {exc}")
        rows.append(r)
    t = Table()
    for j, name in enumerate(post.names):
        t[name] = [r["values"][j] for r in rows]
        t[f"{name}_err"] = [np.sqrt(r["cov"][j, j]) if r["cov"][j, j] >= 0 else np.nan for r in rows]
    t["cov"] = np.array([r["cov"] for r in rows]).reshape(len(rows), n, n)
    t["converged"] = [r["converged"] for r in rows]
    t["method"] = [r["method"] for r in rows]
    t["status"] = [r["message"] for r in rows]
    t.meta["PARAMS"] = ",".join(post.names)
    return t
