"""Full posteriors of one star's labels: NumPyro NUTS or emcee → `arviz.InferenceData`.

Both samplers evaluate the same jax log density (`slambayes.posterior.Posterior`:
Eq. 8 + prior, in numpyro's unconstrained space of the support box) and start
at the MAP. The InferenceData holds:

- ``posterior``: the sampler's own draws, one variable per label and nuisance
  parameter, physical units, dims (chain, draw); for emcee each walker is a chain.
  The density is the calibrated one (`slambayes.posterior.Posterior`), under any
  prior, so no draw is remapped: every group below belongs to the same draws. With a
  calibration, ``label_offset`` (chain, draw, fit_parameter) holds each draw's δ: the
  emulator describes the spectrum at φ = θ + δ;
- ``sample_stats``: ``lp`` (log posterior), and for NUTS ``diverging``,
  ``n_steps``, ``acceptance_rate``, ``energy``, ``step_size``;
- ``log_likelihood``: ``flux`` (chain, draw, pixel), each draw's log likelihood p(f | φ) per
  used pixel (`StarNoise.pointwise_log_likelihood`; they sum to the star's), so that
  ``az.loo`` and ``az.waic`` work;
- ``posterior_predictive``: ``flux`` (chain, draw, pixel), for every draw its model
  spectrum (at φ) plus a draw of the noise model's noise (observed and model error), so that ``az.plot_ppc`` and ``az.loo_pit(idata, y="flux")`` work;
- ``observed_data``: ``flux`` (pixel). Dimension ``pixel`` holds the pixels the
  density uses (masked and clipped ones are left out), its coordinates the pixel
  index and ``pixel_wave`` (Å); ``constant_data`` (dim ``wave``, every pixel): ``ivar``,
  ``sigma_model``, ``pixel_clipped`` (the pixels the MAP clipped as outliers),
  ``model_map``, ``model_median``;
- ``posterior.attrs``: the MAP (``map_names``, ``map_values``, ``map_cov`` (the
  density's Laplace covariance) and ``map_cov_formal`` (the uncalibrated likelihood's)
  flattened, ``map_rchi2``, ``map_method``), the noise model (``noise``,
  ``noise_model``), the fit settings (``map_options``, `MapOptions.to_json`), the
  support box (``support_low``/``support_high``)
  and the fraction of draws within 1 % of its edges (``edge_fraction``; `sample`
  warns above 5 %), the star's id (``star_id``), the prior's repr, the model's hashes
  and the run settings; every group carries ``inference_library`` and its version;
  each posterior variable its ``units``.

Write it with ``idata.to_netcdf("star.nc")``; `slambayes diagnose star.nc` reads it.
"""
from __future__ import annotations

import importlib.metadata
import time

import numpy as np

from .float64 import in_float64
from .likelihood import StarNoise
from .posterior import N_LIKE, Posterior, _star_id
from .progress import bar

__all__ = ["sample", "run_nuts", "run_emcee", "to_inference_data", "map_from_idata"]

SAMPLERS = ("nuts", "emcee")
EDGE_TOL = 0.01         # draws within this fraction of the support box count as "at the edge"
EDGE_WARN = 0.05        # warn when more than this fraction of a parameter's draws is at the edge
BATCH = 256             # draws per evaluation of the emulator


def _initial_points(post, map_row, data, n, rng, spread=0.1):
    """n starting latent vectors (θ_std, then η): the MAP plus `spread` × its Laplace σ, and the
    offset η that takes it to the likelihood's own MAP (θ + L η = φ̂)."""
    theta = post.to_std(map_row["values"])
    cov = post.space.cov_to_std(np.asarray(map_row["cov"], float))
    sd = np.sqrt(np.clip(np.diag(cov), 0, None))
    sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1e-3)
    pts = theta + spread * sd * rng.standard_normal((n, theta.size))
    margin = 1e-6 * (post.high_std - post.low_std)
    pts = np.clip(np.nan_to_num(pts), post.low_std + margin, post.high_std - margin)
    if not post.calibrated:
        return pts
    nf = post.n_fit
    anchor = (np.asarray(map_row["anchor"], float)[:nf] - post.loc[:nf]) / post.scale[:nf]
    eta = np.linalg.pinv(np.asarray(data[-1], float)) @ (anchor - theta[:nf])
    return np.hstack([pts, np.nan_to_num(eta) + spread * rng.standard_normal((n, nf))])


def _nuts_program(post, num_warmup, num_samples, target_accept_prob, dense_mass, n_data):
    """One jitted function (key, u0, *density_data) → draws and statistics of one chain
    (`Posterior.density_data`, n_data arrays): NumPyro's NUTS kernel (functional API) with
    warm-up adaptation, scanned.

    The data are arguments, not constants, so a `Posterior` compiles this once and then
    samples any number of stars (numpyro's `MCMC.run` rebuilds its loop on every call)."""
    import jax
    from jax import lax
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import potential_energy

    def potential_fn_gen(*data):
        return lambda u: potential_energy(post.model, data, {}, post.latent(u))

    init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")

    def chain(key, u0, *args):
        state = init_kernel(u0, num_warmup, dense_mass=dense_mass, target_accept_prob=target_accept_prob,
                            model_args=args, rng_key=key)

        def step(state, _):
            state = sample_kernel(state, model_args=args)
            return state, (state.z, state.diverging, state.num_steps, state.accept_prob, state.energy,
                           state.potential_energy, state.adapt_state.step_size)

        _, trace = lax.scan(step, state, None, length=num_warmup + num_samples)
        return jax.tree.map(lambda x: x[num_warmup:], trace)

    return jax.jit(chain), jax.jit(jax.vmap(chain, in_axes=(0, 0) + (None,) * n_data))


@in_float64
def run_nuts(post, data, map_row, num_warmup=1000, num_samples=1000, num_chains=4, seed=0,
             chain_method="sequential", target_accept_prob=0.8, dense_mass=True, progress=True):
    """NUTS chains → (latent draws (chain, draw, n_latent): θ_std then η, stats dict of (chain,
    draw) arrays).

    chain_method "sequential" runs the chains one after another, "vectorized" runs
    them together (jax.vmap); both on CPU. The compiled sampler is cached on `post`,
    so many stars with one `Posterior` (simulation-based calibration, a list of
    chosen stars) compile once.
    """
    import jax
    import jax.numpy as jnp

    if chain_method not in ("sequential", "vectorized"):
        raise ValueError(f"chain_method must be 'sequential' or 'vectorized', not {chain_method!r}")
    args = tuple(jnp.asarray(a) for a in post.density_data(data))
    key = ("nuts", num_warmup, num_samples, target_accept_prob, dense_mass)
    one, many = post._jitted(key, lambda: _nuts_program(post, num_warmup, num_samples,
                                                        target_accept_prob, dense_mass, len(args)))
    u0 = jnp.asarray(post.to_unconstrained(_initial_points(post, map_row, data, num_chains,
                                                           np.random.default_rng(seed))))
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)
    if chain_method == "vectorized":
        out = [np.asarray(x) for x in many(keys, u0, *args)]
    else:
        runs = [one(keys[c], u0[c], *args)
                for c in bar(range(num_chains), progress, desc="NUTS chains")]
        out = [np.stack([np.asarray(r[i]) for r in runs]) for i in range(len(runs[0]))]
    u, div, n_steps, acc, energy, pe, step = out
    theta = post.from_unconstrained(u)
    stats = dict(lp=-pe, diverging=div.astype(bool), n_steps=n_steps, acceptance_rate=acc,
                 energy=energy, step_size=step)
    return theta.reshape(num_chains, num_samples, -1), stats


@in_float64
def run_emcee(post, data, map_row, num_warmup=1000, num_samples=1000, num_walkers=32, seed=0,
              thin=1, progress=True):
    """emcee's affine-invariant ensemble on the same potential as NUTS (vectorized,
    jitted) → (latent draws (walker, draw, n_latent), stats dict); `num_warmup` steps are discarded."""
    import emcee
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import potential_energy

    args = tuple(jnp.asarray(a) for a in post.density_data(data))

    def make():
        def one(u, *d):
            return -potential_energy(post.model, d, {}, post.latent(u))
        return jax.jit(jax.vmap(one, in_axes=(0,) + (None,) * len(args)))
    logp = post._jitted("emcee", make)

    def log_prob(u):
        lp = np.asarray(logp(jnp.asarray(u), *args), float)
        return np.where(np.isnan(lp), -np.inf, lp)

    ndim = post.n_latent
    if num_walkers < 2 * ndim:
        raise ValueError(f"emcee needs at least 2 × {ndim} walkers, got {num_walkers}")
    rng = np.random.default_rng(seed)
    u0 = post.to_unconstrained(_initial_points(post, map_row, data, num_walkers, rng))
    sampler = emcee.EnsembleSampler(num_walkers, ndim, log_prob, vectorize=True)
    sampler.random_state = np.random.RandomState(seed).get_state()
    sampler.run_mcmc(u0, num_warmup + num_samples * thin, progress=progress)
    u = sampler.get_chain(discard=num_warmup, thin=thin)               # (draw, walker, ndim)
    lp = sampler.get_log_prob(discard=num_warmup, thin=thin)
    theta = post.from_unconstrained(np.swapaxes(u, 0, 1))
    return theta, dict(lp=np.swapaxes(lp, 0, 1)), float(np.mean(sampler.acceptance_fraction))


def map_from_idata(idata):
    """The MAP stored by `sample`: dict(names, values, cov (calibrated), cov_formal, method, noise)."""
    a = idata.posterior.attrs
    names = tuple(str(a["map_names"]).split(","))
    k = len(names)
    cov = np.asarray(a["map_cov"], float).reshape(k, k)
    return dict(names=names, values=np.asarray(a["map_values"], float), cov=cov,
                cov_formal=np.asarray(a.get("map_cov_formal", a["map_cov"]), float).reshape(k, k),
                method=str(a["map_method"]), noise=str(a.get("noise", "")))


def _batched(post, name, fn, flat, data=()):
    """fn(flat[i:i+B], *data) over batches of draws (bounds memory: B × n_pix × n_train), jitted once."""
    import jax
    import jax.numpy as jnp

    f = post._jitted("batch_" + name, lambda: jax.jit(fn))
    args = tuple(jnp.asarray(a) for a in data)
    return np.concatenate([np.asarray(f(jnp.asarray(flat[i:i + BATCH]), *args), float)
                           for i in range(0, len(flat), BATCH)])


@in_float64
def to_inference_data(post, data, ivar, theta, stats, map_row, attrs=None, seed=0):
    """Build the InferenceData (see module docstring) from standardized draws;
    `ivar` (n_pix,) is the observed inverse variance, `data` the density's (`Posterior.data`)."""
    import warnings

    import arviz as az
    import jax

    flux = data[0]
    n = len(post.names)
    params = post.from_std(theta[..., :n])                            # (chain, draw, n_par)
    flat = params.reshape(-1, n)
    if post.calibrated:
        # the likelihood's labels φ = θ + δ of each draw (the calibration's offset: `Posterior.model`)
        eta = theta[..., n:].reshape(-1, post.n_fit)
        phi = post.likelihood_params(theta[..., :n].reshape(-1, n), eta, np.asarray(data[N_LIKE], float))
    else:
        phi = flat
    good = np.flatnonzero(np.asarray(data[1]) > 0)                    # the pixels the density uses
    shape = params.shape[:2] + (good.size,)
    like = data[:N_LIKE]
    ll = _batched(post, "pointwise", jax.vmap(post.pointwise_log_likelihood, in_axes=(0,) + (None,) * N_LIKE),
                  phi, like)[:, good].reshape(shape)
    # replicated spectra: each draw's model spectrum plus a draw of the noise (`StarNoise.draw`)
    model = _batched(post, "model_flux", jax.vmap(post.model_flux), phi)[:, good]
    _, isd, Q, c2, _ = (np.asarray(a, float) for a in like)
    ppc = (model + StarNoise.draw(np.random.default_rng([seed, 1]), len(phi), isd, Q, c2)).reshape(shape)
    k = post.n_labels
    values = np.asarray(map_row["values"], float)
    edge = post.space.edge_fraction(params, EDGE_TOL)
    hits = [f"{n} {f:.0%}" for n, f in zip(post.names, edge) if f > EDGE_WARN]
    if hits:
        warnings.warn(f"posterior mass at the edge of the support (the training domain) for "
                      f"{', '.join(hits)} of the draws: the labels may lie outside what the emulator "
                      f"was trained on", UserWarning, stacklevel=3)
    predict = post._predict
    median = np.median(flat, 0)
    wave = np.asarray(post.emulator.wave_, float)
    pixel = {"pixel": good}
    posterior = {name: params[..., i] for i, name in enumerate(post.names)}
    extra_dims = {}
    if post.calibrated:
        posterior["label_offset"] = (phi - flat)[:, :post.n_fit].reshape(params.shape[:2] + (post.n_fit,))
        extra_dims = {"label_offset": ["fit_parameter"]}
    groups = dict(
        posterior=posterior,
        sample_stats=stats,
        log_likelihood={"flux": ll},
        posterior_predictive={"flux": ppc},
        observed_data={"flux": np.asarray(flux, float)[good]},
        constant_data={"ivar": np.asarray(ivar, float), "sigma_model": post.noise.sigma_model,
                       "pixel_clipped": np.isin(np.arange(wave.size), map_row.get("clipped", ())),
                       "model_map": np.asarray(predict(values[:k])),
                       "model_median": np.asarray(predict(median[:k]))},
        coords={"wave": wave, "fit_parameter": list(post.names[:post.n_fit]), **pixel},
        dims={**extra_dims, "flux": ["pixel"], "ivar": ["wave"], "sigma_model": ["wave"], "pixel_clipped": ["wave"],
              "model_map": ["wave"], "model_median": ["wave"]},
    )
    idata = az.from_dict(**groups)
    # each used pixel's wavelength beside its index (masked and clipped pixels are left out)
    idata.map(lambda ds: ds.assign_coords(pixel_wave=("pixel", wave[good])),
              groups=["observed_data", "posterior_predictive", "log_likelihood"], inplace=True)
    for i, name in enumerate(post.names):
        idata.posterior[name].attrs["units"] = post.space.units[i]
    idata.posterior.attrs.update(
        map_names=",".join(post.names), map_values=values,
        map_cov=np.asarray(map_row["cov"], float).reshape(n * n),
        map_cov_formal=np.asarray(map_row.get("cov_formal", map_row["cov"]), float).reshape(n * n),
        map_rchi2=float(map_row.get("rchi2", np.nan)), map_method=str(map_row.get("method", "")),
        label_names=",".join(post.names[:k]), model_error=post.noise.kind, noise=post.noise.tag,
        noise_model=post.noise.describe(), calibrated=int(post.calibrated), map_options=post.options.to_json(),
        support_low=post.low, support_high=post.high, edge_fraction=edge, edge_tol=EDGE_TOL,
        prior=repr(post.prior), model_training_hash=str(getattr(post.emulator, "training_hash_", "")),
        model_hash=str(getattr(post.emulator, "model_hash", "")),
        **(attrs or {}))
    return idata


@in_float64
def sample(emulator, spectrum, prior=None, sampler="nuts", num_warmup=1000, num_samples=1000,
           num_chains=4, seed=0, model_error=None, calibration=None, chain_method="sequential",
           num_walkers=32, thin=1, map_row=None, support_pad=None, target_accept_prob=0.8, progress=True,
           fit_rv=None, options=None):
    """Sample the posterior of one star's labels.

    Parameters
    ----------
    emulator : fitted `Emulator`, or a `slambayes.posterior.Posterior` (reused:
        compiled once for many stars; `prior`, `model_error`, `calibration` then come from it)
    spectrum : `Spectra` holding one star, on the emulator's wavelength grid
    prior : prior object (`slambayes.priors`), or None (flat on the training range)
    sampler : "nuts" (NumPyro) or "emcee"
    num_warmup, num_samples : per chain (NUTS) or per walker (emcee; warm-up discarded)
    num_chains : NUTS chains; `chain_method` "sequential" | "vectorized" (both CPU)
    options : `slambayes.MapOptions`, the settings of the density and its MAP, the object
        `fit_map` took (or `MapOptions.from_header(catalog.meta)`), so that the posterior is one
        of the catalog's density; None: the defaults
    model_error, calibration, support_pad, fit_rv : given, each replaces that setting of
        `options` (see `Posterior`)
    num_walkers, thin : emcee ensemble size and thinning
    seed : random seed; same inputs and seed give the same draws
    map_row : the star's `Posterior.find_map` result (computed if None; it fixes the clipped
        pixels and the calibration's term of the density)

    Returns
    -------
    arviz.InferenceData (see the module docstring for the groups)
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, not {sampler!r}")
    post = emulator if isinstance(emulator, Posterior) else \
        Posterior(emulator, prior, model_error, calibration, support_pad, fit_rv=fit_rv, options=options)
    if map_row is None or "clipped" not in map_row or "label_factor" not in map_row:
        # the pixels the MAP clips are left out of the sampled density too, and the calibration's
        # term is the one of this star's fit (one density)
        fit = post.find_map(spectrum)
        map_row = fit if map_row is None else dict(map_row, clipped=fit["clipped"], label_factor=fit["label_factor"])
    data = post.data(spectrum, map_row)
    t0 = time.perf_counter()
    extra = {}
    if sampler == "nuts":
        theta, stats = run_nuts(post, data, map_row, num_warmup, num_samples, num_chains, seed,
                                chain_method, target_accept_prob, progress=progress)
    else:
        theta, stats, acc = run_emcee(post, data, map_row, num_warmup, num_samples, num_walkers, seed,
                                      thin, progress)
        extra["acceptance_fraction"] = acc
    attrs = dict(sampler=sampler, num_warmup=num_warmup, num_samples=num_samples, seed=seed,
                 sampling_time_s=time.perf_counter() - t0, star_id=_star_id(spectrum), **extra)
    idata = to_inference_data(post, data, spectrum.ivar[0], theta, stats, map_row, attrs, seed)
    library = "numpyro" if sampler == "nuts" else "emcee"
    version = importlib.metadata.version(library)
    for group in idata.groups():       # as ArviZ's own converters (from_numpyro, from_emcee) mark them
        idata[group].attrs.update(inference_library=library, inference_library_version=version)
    return idata
