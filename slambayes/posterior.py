"""The log posterior of one star: the noise model's likelihood + prior, in jax.

The likelihood is the one of `slambayes.likelihood.NoiseModel` (Eq. 8, or its
correlated form, by default the same choice as `fit_map`) with the calibration as an
errors-in-variables term: the spectrum is described at φ = θ + δ, δ ~ N(0, Δ), Δ the
star's calibration term (`NoiseModel.label_covariance`), and the samplers draw δ
with θ. So NUTS and emcee sample the density whose Laplace form the survey catalog
reports, under any prior. Its MAP comes from the catalog's own core
(`slambayes.map_core.fit_spectra`), with the same `MapOptions`.

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

import numpy as np

from .doppler import DopplerShift
from .float64 import in_float64
from .label_space import LabelSpace
from .likelihood import NoiseModel, StarNoise
from .map_core import FLAGS, fit_spectra, gaussian_prior_terms

N_LIKE = 5              # (flux, isd, Q, c2, norm): the likelihood's arrays in `Posterior.data`
from .progress import bar

__all__ = ["Posterior", "fit_map_posterior", "N_LIKE"]


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
    options : `slambayes.MapOptions`, the settings of the density and of its MAP fit, the same
        object `fit_map` takes (or `MapOptions.from_header(catalog.meta)`); None: the defaults
    model_error, calibration, support_pad (= options.bounds_pad), fit_rv, rv_window : given,
        each replaces that setting of `options` (see `NoiseModel.resolve`; a resolved
        `NoiseModel` as `model_error` is used as it is). fit_rv samples a residual radial
        velocity `rv_resid` (km/s, |v| ≤ rv_window) with the labels (`slambayes.doppler`)
    project : let the samplers evaluate the likelihood on the emulator's coefficient basis
        where it is smaller than the spectrum (`density_data`; the same density, exactly);
        False evaluates it pixel by pixel (for benchmarks)

    The density is the noise model's likelihood, calibrated (the calibration's errors-in-
    variables label offset δ ~ N(0, Δ), Δ fixed per star at its likelihood-only MAP:
    `find_map`), times the prior, whatever the prior.

    Attributes
    ----------
    options : the resolved `MapOptions`; noise : the `NoiseModel`
    space : the `LabelSpace` (labels, then nuisance parameters); fit_space : the fit's own
    """

    @in_float64
    def __init__(self, emulator, prior=None, model_error=None, calibration=None, support_pad=None,
                 fit_rv=None, rv_window=None, project=True, options=None):
        from .map_fit import resolve_noise, resolve_options, UNSET, warn_uncalibrated

        def given(v):
            return UNSET if v is None else v
        resolved = model_error if isinstance(model_error, NoiseModel) else None
        self.options = resolve_options(
            options, model_error=UNSET if resolved is not None else given(model_error),
            calibration=given(calibration), bounds_pad=given(support_pad), fit_rv=given(fit_rv),
            rv_window=given(rv_window))
        self.emulator, self.prior = emulator, prior
        self.noise = NoiseModel.resolve(emulator, resolved) if resolved is not None else \
            resolve_noise(emulator, self.options)
        if not self.noise.calibrated:
            warn_uncalibrated(emulator, self.options)
        labels = tuple(emulator.label_names_)
        nuisance = {n: tuple(v) for n, v in dict(_prior_attr(prior, "nuisance", {})).items()
                    if n not in labels}
        # the fit's own parameters (labels, rv_resid) as `fit_star` has them, then the prior's
        space = self.options.parameter_space(LabelSpace.from_emulator(emulator, self.options.bounds_pad))
        self.fit_space = space
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
        self._doppler = DopplerShift(emulator.wave_) if self.options.fit_rv else None
        # the samplers' density on the low-rank basis of the model spectra, where there is one
        # (a Doppler shift moves the spectrum off it)
        self._projection = emulator.jax_projection() if project and not self.options.fit_rv \
            and hasattr(emulator, "jax_projection") else None
        self._cache = {}

    @property
    def calibrated(self):
        """Whether the density carries the error calibration (under any prior)."""
        return self.noise.calibrated

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
    def star_noise(self, spectrum, clipped=()):
        """The `StarNoise` of one star of a `Spectra` on the emulator's grid, without the pixels
        `clipped` by its MAP fit."""
        from .map_fit import check_grid

        if spectrum.n_star != 1:
            raise ValueError(f"sample one star at a time: got {spectrum.n_star} spectra; "
                             f"select one with spectra[i]")
        check_grid(self.emulator, spectrum)
        noise = self.noise.star(spectrum.ivar[0])
        if noise.n_good <= self.n_labels:
            raise ValueError(f"star {_star_id(spectrum)}: only {noise.n_good} good pixel(s)")
        return noise.without(np.asarray(clipped, int)) if np.size(clipped) else noise

    def data(self, spectrum, map_row=None):
        """(flux, isd, Q, c2, norm, offset): the arrays the jax density takes for one star, of its
        MAP `map_row` (`find_map`): the clipped pixels left out, and `offset` (n_fit, n_fit) the
        factor L (L Lᵀ = Δ, standardized units) of the calibration's label offset δ = L η
        (zeros without a calibration). map_row None: no pixel clipped, and (only for an
        uncalibrated density) no offset."""
        if map_row is None and self.calibrated:
            raise ValueError("a calibrated density needs the star's MAP (Posterior.find_map), whose fit "
                             "sets the calibration's term")
        noise = self.star_noise(spectrum, () if map_row is None else map_row.get("clipped", ()))
        L = np.zeros((self.n_fit, self.n_fit))
        if self.calibrated:
            d = np.asarray(map_row["label_cov"], float)[:self.n_fit, :self.n_fit] / np.outer(
                self.scale[:self.n_fit], self.scale[:self.n_fit])
            lam, V = np.linalg.eigh(0.5 * (d + d.T))
            L = V * np.sqrt(np.clip(lam, 0.0, None))
        return (np.where(noise.good, spectrum.flux[0], 0.0),) + noise.arrays() + (L,)

    def density_data(self, data):
        """The arguments of `model` (and of the samplers) for one star's `data`: `data` itself,
        or, when the emulator offers a low-rank basis (`Emulator.jax_projection`), the same
        likelihood projected on it (`StarNoise.project`), O(R²) per evaluation; the offset
        factor last."""
        offset = np.asarray(data[N_LIKE], float) if len(data) > N_LIKE else np.zeros((self.n_fit, self.n_fit))
        if self._projection is None:
            return tuple(data[:N_LIKE]) + (offset,)
        _, B, c0 = self._projection
        flux, isd, Q, c2, norm = (np.asarray(a, float) for a in data[:N_LIKE])
        return StarNoise.project(flux - c0, B, isd, Q, c2, norm) + (offset,)

    # ------------------------------------------------- latent parameters
    @property
    def n_latent(self):
        """Sampled dimensions: the parameters, then (calibrated) the offset's η (n_fit)."""
        return len(self.names) + (self.n_fit if self.calibrated else 0)

    def latent(self, u):
        """numpyro's sample sites of one latent vector u (..., n_latent)."""
        n = len(self.names)
        return {"theta": u[..., :n], "eta": u[..., n:]} if self.calibrated else {"theta": u}

    def likelihood_params(self, theta_std, eta, offset):
        """Physical parameters φ at which the emulator is evaluated: θ + L η on the fit's
        parameters (labels, rv_resid), θ for the prior's nuisance parameters. theta_std
        (..., n_par), eta (..., n_fit), offset L (n_fit, n_fit); numpy or jax."""
        nf = self.n_fit
        shifted = theta_std[..., :nf] + eta @ offset.T
        if len(self.names) > nf:
            import jax.numpy as jnp
            xp = jnp if not isinstance(theta_std, np.ndarray) else np
            shifted = xp.concatenate([shifted, theta_std[..., nf:]], axis=-1)
        return self.loc + self.scale * shifted

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
        """The numpyro model: θ_std uniform on the support box, prior as a factor; with a
        calibration the label offset η ~ N(0, I), δ = L η, and the likelihood of the spectrum
        at φ = θ + δ (errors in variables: the calibrated likelihood ∫ p(f | θ + δ) N(δ; 0, Δ) dδ,
        sampled, not approximated), else at θ. It takes `density_data(data)`."""
        import numpyro
        import numpyro.distributions as dist

        theta = numpyro.sample("theta", dist.Uniform(self.low_std, self.high_std).to_event(1))
        params = self.loc + self.scale * theta
        like, offset = density_data[:-1], density_data[-1]
        if self.calibrated:
            eta = numpyro.sample("eta", dist.Normal(0.0, 1.0).expand([self.n_fit]).to_event(1))
            phi = self.likelihood_params(theta, eta, offset)
        else:
            phi = params
        numpyro.factor("log_likelihood", self.sampled_log_likelihood(phi, *like))
        if self.prior is not None:
            numpyro.factor("log_prior", self.log_prior(params))

    def _interval(self):
        from numpyro.distributions import constraints
        from numpyro.distributions.transforms import biject_to
        return biject_to(constraints.interval(self.low_std, self.high_std))

    def to_unconstrained(self, theta_std):
        """Latent vectors (..., n_latent) (θ_std then η) → numpyro's unconstrained space (η as it is)."""
        theta_std = np.asarray(theta_std, float)
        n = len(self.names)
        return np.concatenate([np.asarray(self._interval().inv(theta_std[..., :n])), theta_std[..., n:]], -1)

    def from_unconstrained(self, u):
        u = np.asarray(u, float)
        n = len(self.names)
        return np.concatenate([np.asarray(self._interval()(u[..., :n])), u[..., n:]], -1)

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
        return self.n_labels + int(self.options.fit_rv)

    @in_float64
    def find_map(self, spectrum):
        """MAP and Laplace covariance of one star's density → dict(names, values, cov, cov_formal,
        rchi2, quality, flag, method, converged, message, noise, clipped (pixel indices the fit
        clipped), label_cov (the calibration's term Δ), anchor (the likelihood's MAP φ̂)).

        The fit is the catalog's (`fit_spectra` with this posterior's options, the fit checks
        included), so that without a prior, or with a Gaussian one, this is the catalog row's
        fit to the last bit. Under a non-Gaussian prior or with nuisance parameters the full
        log posterior (the calibrated likelihood × prior) is then maximized from the
        likelihood's MAP with L-BFGS-B on jax gradients, its covariance the inverse jax Hessian.
        `cov_formal` is the uncalibrated likelihood's covariance.
        """
        from .map_fit import training_models

        noise = self.star_noise(spectrum)
        flux = np.where(noise.good, spectrum.flux[0], 0.0)
        k = self.n_labels
        gaussian = self.is_gaussian()
        terms = gaussian_prior_terms(self.prior, self.space) if gaussian and self.prior is not None else ()
        if "train" not in self._cache:
            self._cache["train"] = training_models(self.emulator) if hasattr(self.emulator, "X_train_") else \
                (self.loc[None, :k], np.asarray(self.emulator.predict_and_jacobian(self.loc[:k])[0])[None])
        fit = fit_spectra(self.emulator, flux[None], spectrum.ivar[:1], self.noise, self.fit_space,
                          self._cache["train"], self.options, terms, getattr(self.emulator, "checks_", None))[0][0]
        out = dict(names=self.names, values=fit.values, cov=fit.cov, cov_formal=fit.cov_formal,
                   label_cov=fit.label_cov, anchor=fit.anchor,
                   rchi2=fit.rchi2, quality=np.array([fit.rchi2, fit.share]), flag=fit.flag,
                   method="LM", converged=fit.converged, message=fit.status, noise=self.noise.tag,
                   clipped=fit.clipped, laplace_ok=fit.laplace_ok)
        if not gaussian:
            start = fit.values if np.all(np.isfinite(fit.values)) else self.loc[:self.n_fit]
            if self.calibrated:
                # the calibrated likelihood in its Laplace form, as the catalog has it
                like = (np.asarray(start, float), np.linalg.inv(np.asarray(fit.cov, float)))
            else:
                like = self.data(spectrum, out)[:N_LIKE]
            polished = self._polish(start, like)
            n = len(self.names)
            formal = np.full((n, n), np.nan)
            formal[:self.n_fit, :self.n_fit] = fit.cov_formal
            # the polish's own solver bits replace the fit's; the fit checks' bits stay
            solver = FLAGS["no_data"] | FLAGS["not_converged"] | FLAGS["at_edge"]
            out.update(polished, cov_formal=formal, flag=int(polished["flag"]) | (int(fit.flag) & ~solver))
        return out

    @in_float64
    def _polish(self, start, data):
        """L-BFGS-B on the full log posterior from `start` (labels), nuisance at their loc.
        data : the likelihood's arrays (`data(...)[:N_LIKE]`), or (mean, precision) of its
        Gaussian (Laplace) form on the fit's parameters."""
        import jax
        from scipy.optimize import minimize

        x0 = np.clip(self.to_std(np.r_[start, self.loc[len(start):]]), self.low_std + 1e-6, self.high_std - 1e-6)

        laplace = len(data) == 2

        def neg(t, *d):
            if not laplace:
                return -self.log_prob_std(t, *d)
            params = self.loc + self.scale * t
            r = params[:self.n_fit] - d[0]
            return 0.5 * r @ d[1] @ r - self.log_prior(params)

        def make():
            return jax.jit(jax.value_and_grad(neg)), jax.jit(jax.hessian(neg))
        vg, hess = self._jitted("map_laplace" if laplace else "map", make)

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
        return dict(values=values, cov=self.space.cov_to_phys(cov_std), method="L-BFGS-B",
                    converged=bool(res.success and ok), message=msg, flag=flag)


def _star_id(spectrum):
    meta = getattr(spectrum, "meta", None)
    if meta is not None and "id" in getattr(meta, "colnames", ()):
        return str(meta["id"][0])
    return "0"


@in_float64
def fit_map_posterior(emulator, spectra, prior=None, model_error=None, calibration=None,
                      support_pad=None, progress=True, fit_rv=None, options=None):
    """MAP of the full log posterior (any prior) for each spectrum → astropy Table.

    Use it for priors that `fit_map` cannot take as Gaussian residuals (Parallax,
    GalacticModel, TrainingDensity, …). Slower than `fit_map` (one jax optimization
    per star); meant for chosen stars. Columns: one per parameter (labels, then
    nuisance parameters), `<name>_err` (calibrated) and `<name>_err_formal`, `cov`,
    `cov_formal` (n_par, n_par), `rchi2`, `flag`, `converged`, `method`, `status`. A star
    that fails gets NaN values and its error in `status`.
    """
    from astropy.table import Table

    post = Posterior(emulator, prior, model_error, calibration, support_pad, fit_rv=fit_rv, options=options)
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
