"""The log posterior of one star: the noise model's likelihood + prior, in jax.

The likelihood is the one of `slambayes.likelihood.NoiseModel` (Eq. 8, or its
correlated form, by default the same choice as `fit_map`), so NUTS and emcee
sample exactly the density whose maximum the survey catalog reports. Its MAP
comes from the catalog's own core (`slambayes.map_core.fit_stars`).

Parameters live in standardized units (`slambayes.label_space.LabelSpace`): the
emulator's labels followed by any nuisance parameters a prior asks for (e.g.
"mass" for `Parallax`). Each has a box support: the training label range
(padded by `support_pad` × span) intersected with the prior's own support, and a
nuisance parameter's declared range. The numpyro model draws θ_std from that
box, so NUTS works in the unconstrained space of numpyro's interval bijection
and never leaves the support; emcee evaluates exactly the same potential.

A prior is any object with `label_names` and a jax `log_prob(values)`
(values (..., len(label_names)) in physical units); `nuisance` and `support()`
are optional (see `slambayes.priors.Prior`).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from .doppler import DopplerShift
from .float64 import in_float64
from .label_space import LabelSpace
from .likelihood import NoiseModel, StarNoise
from .map_core import FLAGS, MapOptions, fit_stars, gaussian_prior_terms
from .start_points import start_indices
from .progress import bar

__all__ = ["Posterior", "fit_map_posterior"]


def _prior_attr(prior, name, default):
    value = getattr(prior, name, default) if prior is not None else default
    return value() if callable(value) else value


class Posterior:
    """Log posterior of the labels of one spectrum for an emulator and a prior.

    Parameters
    ----------
    emulator : fitted `Emulator` (or any object with `label_names_`, `label_mean_`,
        `label_std_`, `label_min_`, `label_max_`, `wave_`, the model-error arrays read
        by `NoiseModel.resolve`, `predict_and_jacobian(labels)` and `jax_predictor()`)
    prior : a prior (see module docstring) or None (flat inside the support)
    model_error, calibration : see `NoiseModel.resolve` (defaults as in `fit_map`), or a
        resolved `NoiseModel` as `model_error`
    support_pad : fraction of the training range added on each side of the support
    fit_rv, rv_window : sample a residual radial velocity `rv_resid` (km/s, |v| ≤ rv_window)
        with the labels, as `fit_map(fit_rv=True)` fits it (`slambayes.doppler`)
    project : let the samplers evaluate the likelihood on the emulator's coefficient basis
        where it is smaller than the spectrum (`density_data`; the same density, exactly);
        False evaluates it pixel by pixel (for benchmarks)

    Attributes
    ----------
    noise : the `NoiseModel`; space : the `LabelSpace` (labels, then nuisance parameters)
    """

    @in_float64
    def __init__(self, emulator, prior=None, model_error="auto", calibration="auto", support_pad=0.0,
                 fit_rv=False, rv_window=20.0, project=True):
        self.emulator, self.prior = emulator, prior
        self.noise = NoiseModel.resolve(emulator, model_error, calibration)
        labels = tuple(emulator.label_names_)
        nuisance = {n: tuple(v) for n, v in dict(_prior_attr(prior, "nuisance", {})).items()
                    if n not in labels}
        # the fit's own parameters (labels, rv_resid) as `fit_star` has them, then the prior's
        self.map_options = MapOptions(fit_rv=bool(fit_rv), rv_window=float(rv_window))
        space = self.map_options.parameter_space(LabelSpace.from_emulator(emulator, support_pad))
        space = space.with_nuisance(nuisance)
        prior_names = tuple(_prior_attr(prior, "label_names", ()))
        missing = [n for n in prior_names if n not in space.names]
        if missing:
            raise KeyError(f"prior {type(prior).__name__} needs label(s) {missing}, which the emulator "
                           f"does not have (it has {list(labels)}) and which are not declared nuisance "
                           f"parameters")
        self.space = space.cut(_prior_attr(prior, "support", {}))
        self._prior_idx = np.array([self.space.names.index(n) for n in prior_names], int)
        self._predict = emulator.jax_predictor()
        self._doppler = DopplerShift(emulator.wave_) if fit_rv else None
        # the samplers' density on the low-rank basis of the model spectra, where there is one
        # (a Doppler shift moves the spectrum off it)
        self._projection = emulator.jax_projection() if project and not fit_rv \
            and hasattr(emulator, "jax_projection") else None
        self._cache = {}
        # the calibration is a label-space map about the MAP of the likelihood (and Gaussian
        # priors, as in the catalog); under any other prior it would widen what the prior knows
        self.calibrated = self.noise.calibrated and self.is_gaussian()
        if self.noise.calibrated and not self.calibrated:
            import warnings
            warnings.warn(f"the error calibration is not applied under the non-Gaussian prior "
                          f"{type(prior).__name__}: the posterior widths are the formal ones",
                          UserWarning, stacklevel=2)

    # ------------------------------------------------------------- units
    names = property(lambda self: self.space.names)
    n_labels = property(lambda self: self.space.n_labels)
    loc = property(lambda self: self.space.loc)
    scale = property(lambda self: self.space.scale)
    low = property(lambda self: self.space.low)
    high = property(lambda self: self.space.high)
    low_std = property(lambda self: self.space.low_std)
    high_std = property(lambda self: self.space.high_std)
    model_error = property(lambda self: self.noise.kind)

    def to_std(self, values):
        return self.space.to_std(values)

    def from_std(self, theta):
        return self.space.from_std(theta)

    # -------------------------------------------------------------- data
    def star_noise(self, spectrum):
        """The `StarNoise` of one star of a `Spectra` on the emulator's grid."""
        from .map_fit import check_grid

        if spectrum.n_star != 1:
            raise ValueError(f"sample one star at a time: got {spectrum.n_star} spectra; "
                             f"select one with spectra[i]")
        check_grid(self.emulator, spectrum)
        noise = self.noise.star(spectrum.ivar[0])
        if noise.n_good <= self.n_labels:
            raise ValueError(f"star {_star_id(spectrum)}: only {noise.n_good} good pixel(s)")
        return noise

    def data(self, spectrum, clipped=()):
        """(flux, isd, Q, c2, norm): the arrays the jax density takes for one star, without
        the pixels `clipped` by its MAP fit (`find_map(...)["clipped"]`)."""
        noise = self.star_noise(spectrum)
        if np.size(clipped):
            noise = noise.without(np.asarray(clipped, int))
        return (np.where(noise.good, spectrum.flux[0], 0.0),) + noise.arrays()

    def density_data(self, data):
        """The arguments of `model` (and of the samplers) for one star's `data`: `data` itself,
        or, when the emulator offers a low-rank basis (`Emulator.jax_projection`), the same
        likelihood projected on it (`StarNoise.project`), O(R²) per evaluation."""
        if self._projection is None:
            return tuple(data)
        _, B, c0 = self._projection
        flux, isd, Q, c2, norm = (np.asarray(a, float) for a in data)
        return StarNoise.project(flux - c0, B, isd, Q, c2, norm)

    # ----------------------------------------------------- jax densities
    @in_float64
    def model_flux(self, params):
        """The model spectrum (..., n_pix) at physical parameters (..., n_par), jax."""
        import jax.numpy as jnp

        model = self._predict(params[..., :self.n_labels])
        if self._doppler is not None:
            shift = jnp.vectorize(lambda m, v: self._doppler.shift(m, v, xp=jnp), signature="(n),()->(n)")
            model = shift(model, params[..., self.n_labels])
        return model

    @in_float64
    def log_likelihood(self, params, flux, isd, Q, c2, norm):
        """The noise model's log likelihood for physical parameters (..., n_par) → (...)."""
        import jax.numpy as jnp

        return StarNoise.log_likelihood(flux - self.model_flux(params), isd, Q, c2, norm, xp=jnp)

    @in_float64
    def pointwise_log_likelihood(self, params, flux, isd, Q, c2, norm):
        """Per-pixel terms (..., n_pix) of `log_likelihood` (`StarNoise.pointwise_log_likelihood`)."""
        import jax.numpy as jnp

        return StarNoise.pointwise_log_likelihood(flux - self.model_flux(params), isd, Q, c2, norm, xp=jnp)

    @in_float64
    def sampled_log_likelihood(self, params, *density_data):
        """`log_likelihood` from `density_data(data)` (the form the samplers evaluate)."""
        import jax.numpy as jnp

        if self._projection is None:
            return self.log_likelihood(params, *density_data)
        u = self._projection[0](params[..., :self.n_labels])
        return StarNoise.projected_log_likelihood(u, *density_data, xp=jnp)

    def log_prior(self, params):
        if self.prior is None:
            return 0.0
        return self.prior.log_prob(params[..., self._prior_idx])

    @in_float64
    def log_prob_std(self, theta, *data):
        """log likelihood + log prior at standardized parameters θ (..., n_par)."""
        params = self.loc + self.scale * theta
        return self.log_likelihood(params, *data) + self.log_prior(params)

    def model(self, *density_data):
        """The numpyro model: θ_std uniform on the support box, likelihood and prior as factors.
        It takes `density_data(data)`."""
        import numpyro
        import numpyro.distributions as dist

        theta = numpyro.sample("theta", dist.Uniform(self.low_std, self.high_std).to_event(1))
        params = self.loc + self.scale * theta
        numpyro.factor("log_likelihood", self.sampled_log_likelihood(params, *density_data))
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
        """True when least squares with Gaussian residuals is the exact MAP of this posterior."""
        return len(self.names) == self.n_fit and gaussian_prior_terms(self.prior, self.space) is not None

    @property
    def n_fit(self):
        """How many parameters `fit_star` fits: the labels, and rv_resid with fit_rv."""
        return self.n_labels + int(self.map_options.fit_rv)

    def _starts(self, flux, noise, cap):
        em = self.emulator
        if not hasattr(em, "X_train_"):
            return self.loc[None, :self.n_labels]
        if "train" not in self._cache:
            from .map_fit import training_models
            self._cache["train"] = training_models(em)
        labels, models = self._cache["train"]
        return labels[start_indices(models, flux[None], noise.weights[None], 1, cap)[0]]

    @in_float64
    def find_map(self, spectrum, options=None):
        """MAP and Laplace covariance of one star → dict(names, values, cov, cov_formal, rchi2,
        flag, method, converged, message, noise, clipped (pixel indices the fit clipped)).

        The labels come from `fit_stars` (the catalog's core, with Gaussian priors as
        residuals). A non-Gaussian prior or nuisance parameters: the full log posterior is
        then maximized from there with L-BFGS-B on jax gradients, and the formal covariance
        is the inverse jax Hessian. `cov` is calibrated as in the catalog (formal under a
        non-Gaussian prior, see `calibrated`).
        """
        options = self.map_options if options is None else \
            replace(options, fit_rv=self.map_options.fit_rv, rv_window=self.map_options.rv_window)
        noise = self.star_noise(spectrum)
        flux = np.where(noise.good, spectrum.flux[0], 0.0)
        k = self.n_labels
        terms = gaussian_prior_terms(self.prior, self.space) if self.prior is not None else ()
        # the catalog's engine (`fit_stars`), so that this is the catalog row's fit to the last bit
        fit = fit_stars(self.emulator, flux[None], [noise], options.parameter_space(self.space),
                        [self._starts(flux, noise, options.clip_sigma)], options, terms or ())[0]
        out = dict(names=self.names, values=fit.values, cov_formal=fit.cov, cov_model=fit.cov_model[:k, :k],
                   rchi2=fit.rchi2, quality=np.array([fit.rchi2, fit.share]), flag=fit.flag,
                   method="LM", converged=fit.converged, message=fit.status, noise=self.noise.tag,
                   clipped=fit.clipped)
        if not self.is_gaussian():
            kept = noise.without(fit.clipped) if fit.n_clipped else noise
            out.update(self._polish(fit.values if np.all(np.isfinite(fit.values)) else self.loc[:self.n_fit],
                                    (np.where(kept.good, flux, 0.0),) + kept.arrays()))
        if self.calibrated:
            out["cov"] = self.noise.calibrate(out["cov_formal"][None], out["cov_model"][None],
                                              self.to_std(out["values"][:k])[None], out["quality"][None])[0]
        else:
            out["cov"] = np.array(out["cov_formal"], float)
        checks = getattr(self.emulator, "checks_", None)
        if checks is not None:
            sigma_std = np.sqrt(np.diag(out["cov"])[:k]) / self.scale[:k]
            out["flag"] = int(out["flag"]) | int(checks.flags(self.to_std(out["values"][:k])[None], out["quality"][None],
                                                               [fit.norm_ratio], sigma_std[None])[0])
        return out

    @in_float64
    def _polish(self, start, data):
        """L-BFGS-B on the full log posterior from `start` (labels), nuisance at their loc."""
        import jax
        from scipy.optimize import minimize

        x0 = np.clip(self.to_std(np.r_[start, self.loc[len(start):]]), self.low_std + 1e-6, self.high_std - 1e-6)

        def make():
            f = jax.jit(jax.value_and_grad(lambda t, *d: -self.log_prob_std(t, *d)))
            h = jax.jit(jax.hessian(lambda t, *d: -self.log_prob_std(t, *d)))
            return f, h
        vg, hess = self._jitted("map", make)

        def fun(t):
            v, g = vg(t, *data)
            return float(v), np.asarray(g, float)
        eps = 1e-9 * (self.high_std - self.low_std)
        res = minimize(fun, x0, jac=True, method="L-BFGS-B", bounds=list(zip(self.low_std + eps, self.high_std - eps)))
        H = np.asarray(hess(res.x, *data), float)
        try:
            cov_std = np.linalg.inv(H)
            ok = bool(np.all(np.linalg.eigvalsh(H) > 0))
        except np.linalg.LinAlgError:
            cov_std, ok = np.linalg.pinv(H), False
        values = self.from_std(res.x)
        edge = bool(self.space.at_edge(values))
        flag = (0 if res.success and ok else FLAGS["not_converged"]) | (FLAGS["at_edge"] if edge else 0)
        msg = str(res.message) + ("" if ok else " | Hessian not positive definite")
        return dict(values=values, cov_formal=self.space.cov_to_phys(cov_std), method="L-BFGS-B",
                    converged=bool(res.success and ok), message=msg, flag=flag)


def _star_id(spectrum):
    meta = getattr(spectrum, "meta", None)
    if meta is not None and "id" in getattr(meta, "colnames", ()):
        return str(meta["id"][0])
    return "0"


@in_float64
def fit_map_posterior(emulator, spectra, prior=None, model_error="auto", calibration="auto",
                      support_pad=0.0, progress=True, fit_rv=False):
    """MAP of the full log posterior (any prior) for each spectrum → astropy Table.

    Use it for priors that `fit_map` cannot take as Gaussian residuals (Parallax,
    GalacticModel, TrainingDensity, …). Slower than `fit_map` (one jax optimization
    per star); meant for chosen stars. Columns: one per parameter (labels, then
    nuisance parameters), `<name>_err` (calibrated) and `<name>_err_formal`, `cov`,
    `cov_formal` (n_par, n_par), `rchi2`, `flag`, `converged`, `method`, `status`. A star
    that fails gets NaN values and its error in `status`.
    """
    from astropy.table import Table

    post = Posterior(emulator, prior, model_error, calibration, support_pad, fit_rv=fit_rv)
    n = len(post.names)
    rows = []
    for i in bar(range(spectra.n_star), progress, desc="MAP (posterior)"):
        try:
            r = post.find_map(spectra[i:i + 1])
        except (ValueError, np.linalg.LinAlgError) as exc:
            nan = np.full((n, n), np.nan)
            r = dict(values=np.full(n, np.nan), cov=nan, cov_formal=nan, rchi2=np.nan, flag=FLAGS["error"],
                     method="", converged=False, message=f"error: {exc}")
        rows.append(r)
    t = Table()
    for j, name in enumerate(post.names):
        t[name] = [r["values"][j] for r in rows]
        for suffix, key in (("_err", "cov"), ("_err_formal", "cov_formal")):
            t[name + suffix] = [np.sqrt(r[key][j, j]) if r[key][j, j] >= 0 else np.nan for r in rows]
    t["cov"] = np.array([r["cov"] for r in rows]).reshape(len(rows), n, n)
    t["cov_formal"] = np.array([r["cov_formal"] for r in rows]).reshape(len(rows), n, n)
    for col, key in (("rchi2", "rchi2"), ("flag", "flag"), ("converged", "converged"), ("method", "method"),
                     ("status", "message")):
        t[col] = [r[key] for r in rows]
    t.meta["PARAMS"] = ",".join(post.names)
    t.meta["NOISE"] = post.noise.describe()
    return t
