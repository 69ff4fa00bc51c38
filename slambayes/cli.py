"""Command line: `slambayes demo | train | fit | sample | diagnose`."""
from __future__ import annotations

import argparse
import inspect
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("slambayes")


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _floats(text):
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _count(minimum):
    """argparse type: an integer ≥ minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value
    return parse


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _positive_float(text):
    value = _float(text)
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _nonnegative_float(text):
    value = _float(text)
    if not (np.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, got {text!r}")
    return value


SUFFIXES = {"model": (".npz",), "catalog": (".fits", ".fit", ".fits.gz", ".ecsv", ".parquet"),
            "posterior": (".nc",)}


def check_output(path, kind):
    """Refuse, before any work, an output that could not be written: a directory, a missing or
    unwritable folder, an unknown suffix or a format whose library is missing."""
    import os

    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        raise CLIError(f"--out {path} is a directory; give a file name ending in {' or '.join(SUFFIXES[kind])}")
    if not name.endswith(SUFFIXES[kind]):
        raise CLIError(f"--out {path}: a {kind} file must end in {' or '.join(SUFFIXES[kind])}")
    folder = path.parent
    if not folder.is_dir():
        raise CLIError(f"--out {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise CLIError(f"--out {path}: the folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise CLIError(f"--out {path} exists and is not writable")
    if name.endswith(".parquet"):
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise CLIError(f"--out {path}: writing parquet needs pyarrow (pip install pyarrow); "
                           f"or use .fits / .ecsv") from None
    return path


def _names(text):
    return [v.strip() for v in text.split(",") if v.strip()]


# --------------------------------------------------------------------- loading
def _existing(paths):
    """The paths as Path objects; a missing one is a CLIError naming it (before any reading)."""
    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise CLIError(f"no such file: {p}")
    return paths


def load_training_set(spectra_paths, labels=None, label_names=None, key="filename", progress=True):
    """Training spectra from an npz (with labels) or LAMOST FITS + a label catalogue."""
    from . import io, preprocess
    from .spectra import Spectra

    paths = _existing(spectra_paths)
    _existing([labels] if labels else [])
    if len(paths) == 1 and paths[0].suffix == ".npz":
        sp = Spectra.from_npz(paths[0], label_names=label_names)
        if sp.labels is None:
            raise CLIError(f"{paths[0]} has no 'labels' array; give --labels CATALOG")
        return sp
    if labels is None or not label_names:
        raise CLIError("FITS training spectra need --labels CATALOG and --label-names a,b,c")
    sp = io.read_lamost(paths, progress=progress)
    sp = io.join_labels(sp, io.read_label_catalog(labels), label_names, key=key)
    if sp.n_star == 0:
        raise CLIError(f"no spectrum matched a row of {labels} by {key!r}")
    return preprocess.preprocess_lamost(sp)


def load_fit_set(paths, wave, progress=True):
    """Spectra to fit, on the model grid: npz as stored (resampled if needed) or
    LAMOST FITS through the full preprocessing."""
    from . import io, preprocess
    from .spectra_file import SpectraFile

    paths = _existing(paths)
    if len(paths) == 1 and paths[0].suffix == ".npz":
        sp = SpectraFile(paths[0])                # read a chunk at a time
        if sp.wave[-1] <= wave[0] or sp.wave[0] >= wave[-1]:
            raise CLIError(f"{paths[0]} covers {sp.wave[0]:.1f}–{sp.wave[-1]:.1f} Å, outside the model's "
                           f"{wave[0]:.1f}–{wave[-1]:.1f} Å: is it the right model for these spectra?")
        if sp.wave.shape != wave.shape or not np.allclose(sp.wave, wave):
            log.warning("resampling %s onto the model grid (this reads the whole file into memory)", paths[0])
            sp = preprocess.resample(sp.load(), wave)
        return sp
    return preprocess.preprocess_lamost(io.read_lamost(paths, progress=progress), wave=wave)


def _connect(address):
    """A dask.distributed Client of the scheduler at `address`, or None without one."""
    if not address:
        return None
    from dask.distributed import Client
    try:
        return Client(address, timeout="15s")
    except (OSError, TimeoutError) as exc:
        raise CLIError(f"cannot reach the dask scheduler at {address}: {exc}") from None


# -------------------------------------------------------------------- commands
def cmd_train(a):
    from .datasets import make_demo
    from .emulator import Emulator

    check_output(a.out, "model")
    if a.demo:
        sp = make_demo(a.demo, snr=100.0, seed=a.seed)
    elif a.spectra:
        sp = load_training_set(a.spectra, a.labels, _names(a.label_names) if a.label_names else None, a.key,
                               a.progress)
    else:
        raise CLIError("give --spectra FILE(s) (with --labels for FITS) or --demo N")
    log.info("training on %d spectra × %d pixels, labels %s", sp.n_star, sp.n_pix, sp.label_names)
    t0 = time.perf_counter()
    backend = "dask" if _connect(a.scheduler) is not None else None     # the client becomes dask's default
    em = Emulator(C=a.C, gamma=a.gamma, epsilon=a.epsilon, cv=a.cv, n_jobs=a.n_jobs, backend=backend,
                  random_state=a.seed, error_rank=a.error_rank, compression=a.compression, progress=a.progress)
    try:
        em.fit(sp)
    except ValueError as exc:
        source = f"{a.demo} demo spectra" if a.demo else ", ".join(a.spectra)
        raise CLIError(f"cannot train on {source}: {exc}") from None
    calib = ""
    if a.calibrate and a.cv >= 2:
        from .out_of_fold import calibrate
        calibrate(em, sp)
        z0, z1 = (em.calibration_.stats[k] for k in ("z_std_formal", "z_std_calibrated"))
        calib = ("; error calibration from out-of-fold fits: z-score std "
                 + ", ".join(f"{n} {a0:.2f} → {a1:.2f}" for n, a0, a1 in zip(em.label_names_, z0, z1)))
    em.save(a.out)
    log.info(f"trained in {time.perf_counter() - t0:.1f} s; median CV MSE {np.nanmedian(em.cv_mse_):.3f}{calib}; "
             f"model written to {a.out}")


def cmd_fit(a):
    from .emulator import Emulator
    from .map_fit import fit_map

    check_output(a.out, "catalog")
    em = Emulator.load(a.model)
    sp = load_fit_set(a.spectra, em.wave_, a.progress)
    client = _connect(a.scheduler)
    from .map_core import MapOptions
    options = MapOptions(model_error=a.model_error, calibration=a.calibration, n_starts=a.n_starts, loss=a.loss,
                         f_scale=a.f_scale, clip_sigma=None if a.clip_sigma == 0 else a.clip_sigma,
                         fit_rv=a.fit_rv, rv_window=a.rv_window, posterior_draws=a.posterior_draws,
                         posterior_budget=a.posterior_budget, engine=a.engine)
    cat = fit_map(em, sp, options=options, chunk_size=a.chunk_size, n_jobs=a.n_jobs, client=client, output=a.out,
                  overwrite=a.overwrite, progress=a.progress)
    n_bad = int((cat["flag"] != 0).sum())
    skipped = sp.meta.meta.get("skipped", [])
    log.info("%d spectra fitted, %d flagged; catalog written to %s", len(cat), n_bad, a.out)
    if "posterior_method" in cat.colnames:
        kinds, counts = np.unique(np.asarray(cat["posterior_method"]), return_counts=True)
        log.info("posterior summaries: %s", ", ".join(f"{c} {k}" for k, c in zip(kinds, counts)))
    if skipped:
        log.warning("%d input file(s) skipped:\n  %s", len(skipped), "\n  ".join(skipped))


def _prior_value(text):
    """A number, a name, or a ';'-separated list of either ('teff;logg', '5800;4.4')."""
    items = [v.strip() for v in text.split(";")]
    out = []
    for v in items:
        try:
            out.append(float(v))
        except ValueError:
            out.append(v)
    return out if len(items) > 1 else out[0]


def parse_prior(text, emulator):
    """'name' or 'name:key=value,key=value' → a prior object; '+'-joined texts multiply.
    A value is a number, a name, or a ';'-separated list: 'gaussian:label_names=feh,mean=-0.5,sigma=0.1'
    or 'gaussian:label_names=teff;logg,mean=5800;4.4,sigma=100;0.1'."""
    from . import priors

    parts = []
    for item in text.split("+"):
        name, _, args = item.strip().partition(":")
        kw = {}
        for pair in filter(None, (p.strip() for p in args.split(","))):
            key, eq, value = pair.partition("=")
            if not eq:
                raise CLIError(f"prior argument {pair!r} in {item!r} is not key=value")
            kw[key.strip()] = _prior_value(value)
        key = name.lower().replace("_", "")
        if key == "uniform" and not kw:
            parts.append(priors.Uniform.from_emulator(emulator))
        elif key == "trainingdensity" and "labels" not in kw:
            parts.append(priors.TrainingDensity(emulator, **kw))
        else:
            try:
                parts.append(priors.get(name, **kw))
            except (TypeError, ValueError) as exc:
                raise CLIError(f"--prior {item.strip()!r}: {exc}") from None
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def _select_star(sp, star):
    if star is None:
        if sp.n_star != 1:
            raise CLIError(f"the input holds {sp.n_star} spectra; choose one with --star ID or INDEX")
        return sp
    if sp.meta is not None and "id" in sp.meta.colnames:
        hit = np.flatnonzero(np.asarray(sp.meta["id"]).astype(str) == star)
        if hit.size:
            return sp[int(hit[0]):int(hit[0]) + 1]
    if star.isdigit() and int(star) < sp.n_star:
        return sp[int(star):int(star) + 1]
    raise CLIError(f"no star {star!r} in the input ({sp.n_star} spectra): give --star an id of its 'id' "
                   f"column or a 0-based index below {sp.n_star}")


def cmd_sample(a):
    from .emulator import Emulator
    from .sampling import sample

    check_output(a.out, "posterior")
    em = Emulator.load(a.model)
    sp = _select_star(load_fit_set(a.spectra, em.wave_, a.progress), a.star)
    prior = parse_prior(a.prior, em) if a.prior else None
    from .map_core import MapOptions
    if a.catalog:
        options = _catalog_options(a.catalog)
        log.info("fit settings of %s: %s", a.catalog, options.to_json())
    else:
        options = MapOptions(model_error=a.model_error, calibration=a.calibration, fit_rv=a.fit_rv)
    idata = sample(em, sp, prior=prior, sampler=a.sampler, num_warmup=a.num_warmup,
                   num_samples=a.num_samples, num_chains=a.num_chains, num_walkers=a.num_walkers,
                   seed=a.seed, options=options, progress=a.progress)
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(out)
    log.info(f"{a.sampler}: {idata.posterior.sizes['chain']} × {idata.posterior.sizes['draw']} draws in "
             f"{idata.posterior.attrs['sampling_time_s']:.1f} s; written to {out}")
    log.info("next: slambayes diagnose %s", out)


def _catalog_options(path):
    """The `MapOptions` a catalog was written with (its header's MAPOPTS)."""
    from astropy.io import fits

    from .map_core import MapOptions
    if not Path(path).exists():
        raise CLIError(f"no such catalog: {path}")
    try:
        header = fits.getheader(path, 1)
    except OSError as exc:
        raise CLIError(f"--catalog {path}: not a FITS catalog written by `slambayes fit` ({exc})") from None
    try:
        return MapOptions.from_header(header)
    except KeyError as exc:
        raise CLIError(f"--catalog {path}: {exc.args[0]}") from None


def cmd_diagnose(a):
    import arviz as az
    import matplotlib
    matplotlib.use("Agg")
    from .diagnostics import compare_to_laplace, plot_corner, plot_spectrum, plot_trace

    path = Path(a.posterior)
    if not path.exists():
        raise CLIError(f"no such file: {path}")
    try:
        idata = az.from_netcdf(str(path))
    except Exception as exc:                      # netCDF/HDF5 raise many types
        raise CLIError(f"{path} is not an InferenceData netCDF file: {exc}") from None
    if "map_names" not in idata.posterior.attrs:
        raise CLIError(f"{path} was not written by `slambayes sample` (no MAP in its attributes)")
    t = compare_to_laplace(idata)
    for col in t.colnames[1:]:
        t[col].format = ".4g"
    t.pprint(max_width=200)
    m = t.meta
    print(f"divergences {m['divergences']}  KL(post‖LM) {m['kl']:.3f} nats  sampling_ok {m['sampling_ok']}  "
          f"laplace_ok {m['laplace_ok']}")
    out = Path(a.out_dir or path.with_suffix(""))
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in (("corner", plot_corner), ("trace", plot_trace), ("spectrum", plot_spectrum)):
        fn(idata, path=out / f"{name}.png")
        log.info("wrote %s", out / (name + ".png"))


def cmd_demo(a):
    from .demo import run_demo

    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise CLIError(f"--out {a.out} is a file; the demo writes a folder")
    run_demo(Path(a.out), n_train=a.n_train, n_test=a.n_test, n_jobs=a.n_jobs, seed=a.seed, echo=log.info,
             progress=a.progress)


def _noise_options(parser):
    from .likelihood import CALIBRATIONS, MODEL_ERRORS
    from .map_fit import fit_map

    parser.add_argument("--model-error", default=_api(fit_map, "model_error"), choices=MODEL_ERRORS,
                        help="auto: correlated if the model has it, else cv (Eq. 8, independent pixels); "
                             "fit and sample share the default")
    parser.add_argument("--calibration", default=_api(fit_map, "calibration"), choices=CALIBRATIONS,
                        help="auto: the model's out-of-fold error calibration, if it has one")


def _rv_options(parser):
    parser.add_argument("--fit-rv", action="store_true",
                        help="also fit a residual radial velocity rv_resid (km/s) of the model spectrum")


def _api(func, name):
    """The Python API's default of parameter `name` of `func` (or a class's __init__): the
    command line takes its defaults from there, so the two never differ."""
    default = inspect.signature(func).parameters[name].default
    from .map_fit import UNSET
    if default is UNSET:                       # a fit setting: its default lives in MapOptions
        from .map_core import MapOptions
        return MapOptions.__dataclass_fields__[name].default
    return default


def _grid_help(grid):
    """Help for a comma-separated grid with its default written as one would type it."""
    return "comma-separated grid (default: " + ",".join(f"{v:.4g}" for v in grid) + ")%(default).0s"


def _loudness_options(parser, default):
    """-v/-q; a command's own copy has no default, so it cannot reset one given before the command."""
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", default=default, help="also debug messages")
    loud.add_argument("-q", "--quiet", action="store_true", default=default,
                      help="only errors: no messages, warnings or progress bars")


def build_parser():
    p = argparse.ArgumentParser(prog="slambayes", description=__doc__)
    from . import __version__
    from .demo import run_demo
    from .emulator import Emulator
    from .map_core import ENGINES
    from .map_fit import fit_map
    from .sampling import sample

    p.add_argument("--version", action="version", version=f"slambayes {__version__}")
    _loudness_options(p, default=False)
    sub = p.add_subparsers(dest="command", required=True)
    loud = argparse.ArgumentParser(add_help=False)
    _loudness_options(loud, default=argparse.SUPPRESS)     # -q/-v after the command too
    fmt = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter, parents=[loud])

    d = sub.add_parser("demo", help="run the whole journey on the embedded synthetic data", **fmt)
    d.add_argument("--out", default="slambayes-demo", help="output folder")
    d.add_argument("--n-train", type=_count(20), default=_api(run_demo, "n_train"), help="training spectra (≥ 20)")
    d.add_argument("--n-test", type=_count(2), default=_api(run_demo, "n_test"), help="test spectra (≥ 2)")
    d.add_argument("--n-jobs", type=int, default=_api(run_demo, "n_jobs"), help="processes (-1: all cores)")
    d.add_argument("--seed", type=int, default=_api(run_demo, "seed"), help="seed of the synthetic data")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train an emulator", **fmt)
    t.add_argument("--spectra", nargs="+", help="npz with labels, or LAMOST FITS files/folders")
    t.add_argument("--labels", help="label catalogue (CSV/FITS) for FITS spectra")
    t.add_argument("--label-names", help="comma-separated label columns, e.g. teff,logg,feh")
    t.add_argument("--key", default="filename", help="catalogue column to join on")
    t.add_argument("--demo", type=_count(0), default=0, metavar="N", help="train on N demo spectra instead")
    t.add_argument("--out", required=True, help="model file to write (.npz)")
    t.add_argument("--C", type=_floats, default=_api(Emulator, "C"), help=_grid_help(_api(Emulator, "C")))
    t.add_argument("--gamma", type=_floats, default=_api(Emulator, "gamma"), help=_grid_help(_api(Emulator, "gamma")))
    t.add_argument("--epsilon", type=_positive_float, default=_api(Emulator, "epsilon"),
                   help="SVR ε (standardized flux)")
    t.add_argument("--cv", type=_count(0), default=_api(Emulator, "cv"),
                   help="CV folds (0: none; the calibration needs ≥ 2)")
    t.add_argument("--error-rank", type=lambda v: v if v == "auto" else int(v), default=_api(Emulator, "error_rank"),
                   help="components of the correlated model error kept (0: none; auto: n_train // 5, ≤ 100)")
    t.add_argument("--compression", type=_nonnegative_float, default=_api(Emulator, "compression"),
                   help="low-rank evaluation: largest change of a pixel's predictions, as a fraction of "
                        "its CV error (0: the exact SVR expansion)")
    t.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="skip the error calibration from out-of-fold fits of the training stars")
    t.add_argument("--n-jobs", type=int, default=_api(Emulator, "n_jobs"), help="processes (-1: all cores)")
    t.add_argument("--seed", type=int, default=_api(Emulator, "random_state"), help="CV folds' random state")
    t.add_argument("--scheduler", help="dask.distributed scheduler address (train the pixels on its workers)")
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("fit", help="MAP labels for a batch of spectra", **fmt)
    f.add_argument("--model", required=True)
    f.add_argument("--spectra", nargs="+", required=True, help="npz, or LAMOST FITS files/folders")
    f.add_argument("--out", required=True, help="catalog (.fits, .ecsv or .parquet); re-run resumes")
    _noise_options(f)
    f.add_argument("--n-starts", type=_count(1), default=_api(fit_map, "n_starts"),
                   help="start points per star (the best-matching training stars)")
    f.add_argument("--loss", default=_api(fit_map, "loss"), choices=("linear", "soft_l1", "cauchy"),
                   help="linear: Eq. 8; soft_l1/cauchy: robust against outlier pixels")
    f.add_argument("--f-scale", type=_positive_float, default=_api(fit_map, "f_scale"),
                   help="residual (in total σ) beyond which a robust loss down-weights a pixel")
    f.add_argument("--chunk-size", type=_count(1), default=_api(fit_map, "chunk_size"),
                   help="spectra per task (memory is bounded by it)")
    f.add_argument("--clip-sigma", type=float, default=_api(fit_map, "clip_sigma"),
                   help="clip pixels off by more than this many total σ and refit (0: no clipping)")
    _rv_options(f)
    f.add_argument("--rv-window", type=_positive_float, default=_api(fit_map, "rv_window"), help="|rv_resid| bound, km/s")
    f.add_argument("--posterior-draws", type=_count(0), default=_api(fit_map, "posterior_draws"),
                   help="importance draws per star for the posterior summaries (mean, std, p05..p95 per label) "
                        "and the check of the Gaussian errors (even; 0: neither)")
    f.add_argument("--posterior-budget", type=float, default=_api(fit_map, "posterior_budget"),
                   help="extra draws (x posterior-draws) a star whose importance weights fail may get")
    f.add_argument("--engine", default=_api(fit_map, "engine"), choices=ENGINES,
                   help="batched: a chunk's stars in one emulator product per iteration; scipy: one star at a "
                        "time (the reference); auto: batched where it applies")
    f.add_argument("--n-jobs", type=int, default=_api(fit_map, "n_jobs"), help="processes (-1: all cores)")
    f.add_argument("--scheduler", help="dask.distributed scheduler address")
    f.add_argument("--overwrite", action="store_true")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("sample", help="posterior of one star (NUTS or emcee) → InferenceData .nc", **fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--spectra", nargs="+", required=True, help="npz, or LAMOST FITS file(s)")
    s.add_argument("--star", help="id (meta column 'id') or 0-based index, if the input has several")
    s.add_argument("--prior", help="e.g. 'parallax:parallax_mas=2.1,parallax_err_mas=0.05,mag=11.2', "
                                    "'gaussian:label_names=feh,mean=-0.5,sigma=0.1' (lists with ';': "
                                    "label_names=teff;logg,mean=5800;4.4,sigma=100;0.1) "
                                    "or 'galacticmodel:l_deg=30,b_deg=60+trainingdensity'")
    s.add_argument("--sampler", default=_api(sample, "sampler"), choices=("nuts", "emcee"))
    s.add_argument("--num-warmup", type=_count(0), default=_api(sample, "num_warmup"))
    s.add_argument("--num-samples", type=_count(1), default=_api(sample, "num_samples"))
    s.add_argument("--num-chains", type=_count(1), default=_api(sample, "num_chains"))
    s.add_argument("--num-walkers", type=_count(2), default=_api(sample, "num_walkers"))
    _rv_options(s)
    _noise_options(s)
    s.add_argument("--catalog", help="a FITS catalog of `slambayes fit`: sample the density it was fitted "
                                     "with (its settings replace --model-error, --calibration, --fit-rv)")
    s.add_argument("--seed", type=int, default=_api(sample, "seed"), help="random seed of the sampler")
    s.add_argument("--out", required=True, help="netCDF file to write, e.g. star.nc")
    s.set_defaults(func=cmd_sample)

    g = sub.add_parser("diagnose", help="posterior vs LM Laplace table and plots for a .nc file", **fmt)
    g.add_argument("posterior", help="file written by `slambayes sample`")
    g.add_argument("--out-dir", help="folder for the plots (default: beside the file)")
    g.set_defaults(func=cmd_diagnose)

    return p


def configure_logging(quiet=False, verbose=False):
    """Messages of the `slambayes` logger (and Python warnings) for a command-line run: INFO
    and below to stdout, warnings and errors to stderr; -q keeps errors only, -v adds DEBUG."""
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.captureWarnings(True)
    for name in ("slambayes", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [out, err] if name == "slambayes" else [err]
        logger.setLevel(level)
        logger.propagate = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same clean stop as Ctrl-C (joblib then ends its workers)."""


def _raise_terminated(signum, frame):
    raise Terminated


def main(argv=None):
    import signal
    import threading

    args = build_parser().parse_args(argv)
    configure_logging(quiet=args.quiet, verbose=args.verbose)
    args.progress = not args.quiet          # progress bars (on a terminal); -q turns them off
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if on_main_thread else None
    try:
        args.func(args)
    except KeyboardInterrupt as exc:
        out = getattr(args, "out", None)
        hint = (f"; finished chunks are kept in {out}.parts: run the same command again to resume"
                if args.command == "fit" else "")
        how = "terminated" if isinstance(exc, Terminated) else "interrupted"
        print(f"slambayes {args.command}: {how}{hint}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except (CLIError, OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        print(f"slambayes {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
