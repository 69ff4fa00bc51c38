"""Command line: `slambayes demo | train | fit | sample | diagnose`."""
from __future__ import annotations

import argparse
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


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
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
def load_training_set(spectra_paths, labels=None, label_names=None, key="filename"):
    """Training spectra from an npz (with labels) or LAMOST FITS + a label catalogue."""
    from . import io, preprocess
    from .spectra import Spectra

    paths = [Path(p) for p in spectra_paths]
    if len(paths) == 1 and paths[0].suffix == ".npz":
        sp = Spectra.from_npz(paths[0], label_names=label_names)
        if sp.labels is None:
            raise CLIError(f"{paths[0]} has no 'labels' array; give --labels CATALOG")
        return sp
    if labels is None or not label_names:
        raise CLIError("FITS training spectra need --labels CATALOG and --label-names a,b,c")
    sp = io.read_lamost(paths, progress=True)
    sp = io.join_labels(sp, io.read_label_catalog(labels), label_names, key=key)
    if sp.n_star == 0:
        raise CLIError(f"no spectrum matched a row of {labels} by {key!r}")
    return preprocess.preprocess_lamost(sp)


def load_fit_set(paths, wave):
    """Spectra to fit, on the model grid: npz as stored (resampled if needed) or
    LAMOST FITS through the full preprocessing."""
    from . import io, preprocess
    from .spectra import Spectra

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.exists():
            raise CLIError(f"no such file: {p}")
    if len(paths) == 1 and paths[0].suffix == ".npz":
        sp = Spectra.from_npz(paths[0])
        if sp.wave.shape != wave.shape or not np.allclose(sp.wave, wave):
            log.warning("resampling %s onto the model grid", paths[0])
            sp = preprocess.resample(sp, wave)
        return sp
    return preprocess.preprocess_lamost(io.read_lamost(paths, progress=True), wave=wave)


# -------------------------------------------------------------------- commands
def cmd_train(a):
    from .datasets import make_demo
    from .emulator import Emulator

    check_output(a.out, "model")
    if a.demo:
        sp = make_demo(a.demo, snr=100.0, seed=a.seed)
    elif a.spectra:
        sp = load_training_set(a.spectra, a.labels, _names(a.label_names) if a.label_names else None, a.key)
    else:
        raise CLIError("give --spectra FILE(s) (with --labels for FITS) or --demo N")
    print(f"training on {sp.n_star} spectra × {sp.n_pix} pixels, labels {sp.label_names}")
    t0 = time.perf_counter()
    em = Emulator(C=a.C, gamma=a.gamma, epsilon=a.epsilon, cv=a.cv, n_jobs=a.n_jobs,
                  random_state=a.seed, error_rank=a.error_rank).fit(sp)
    calib = ""
    if a.calibrate and a.cv >= 2:
        from .out_of_fold import calibrate
        calibrate(em, sp)
        z0, z1 = (em.calibration_.stats[k] for k in ("z_std_formal", "z_std_calibrated"))
        calib = ("; error calibration from out-of-fold fits: z-score std "
                 + ", ".join(f"{n} {a0:.2f} → {a1:.2f}" for n, a0, a1 in zip(em.label_names_, z0, z1)))
    em.save(a.out)
    print(f"trained in {time.perf_counter() - t0:.1f} s; median CV MSE {np.nanmedian(em.cv_mse_):.3f}{calib}; "
          f"model written to {a.out}")


def cmd_fit(a):
    from .emulator import Emulator
    from .map_fit import fit_map

    check_output(a.out, "catalog")
    em = Emulator.load(a.model)
    sp = load_fit_set(a.spectra, em.wave_)
    client = None
    if a.scheduler:
        from dask.distributed import Client
        try:
            client = Client(a.scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise CLIError(f"cannot reach the dask scheduler at {a.scheduler}: {exc}") from None
    cat = fit_map(em, sp, model_error=a.model_error, calibration=a.calibration, n_starts=a.n_starts, chunk_size=a.chunk_size,
                  n_jobs=a.n_jobs, client=client, output=a.out, overwrite=a.overwrite,
                  loss=a.loss, f_scale=a.f_scale, clip_sigma=None if a.clip_sigma == 0 else a.clip_sigma,
                  fit_rv=a.fit_rv, rv_window=a.rv_window)
    n_bad = int((cat["flag"] != 0).sum())
    print(f"{len(cat)} spectra fitted, {n_bad} flagged; catalog written to {a.out}")


def parse_prior(text, emulator):
    """'name' or 'name:key=value,key=value' → a prior object; '+'-joined texts multiply."""
    from . import priors

    parts = []
    for item in text.split("+"):
        name, _, args = item.strip().partition(":")
        kw = {}
        for pair in filter(None, (p.strip() for p in args.split(","))):
            key, eq, value = pair.partition("=")
            if not eq:
                raise CLIError(f"prior argument {pair!r} in {item!r} is not key=value")
            try:
                kw[key.strip()] = float(value)
            except ValueError:
                kw[key.strip()] = value.strip()
        key = name.lower().replace("_", "")
        if key == "uniform" and not kw:
            parts.append(priors.Uniform.from_emulator(emulator))
        elif key == "trainingdensity" and "labels" not in kw:
            parts.append(priors.TrainingDensity(emulator, **kw))
        else:
            try:
                parts.append(priors.get(name, **kw))
            except TypeError as exc:
                raise CLIError(f"prior {name!r}: {exc}") from None
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
    raise CLIError(f"no star {star!r} in the input ({sp.n_star} spectra; give an id or a 0-based index)")


def cmd_sample(a):
    from .emulator import Emulator
    from .sampling import sample

    check_output(a.out, "posterior")
    em = Emulator.load(a.model)
    sp = _select_star(load_fit_set(a.spectra, em.wave_), a.star)
    prior = parse_prior(a.prior, em) if a.prior else None
    idata = sample(em, sp, prior=prior, sampler=a.sampler, num_warmup=a.num_warmup,
                   num_samples=a.num_samples, num_chains=a.num_chains, num_walkers=a.num_walkers,
                   seed=a.seed, model_error=a.model_error, calibration=a.calibration, fit_rv=a.fit_rv)
    out = Path(a.out)
    tmp = out.with_name(out.name + ".tmp")
    idata.to_netcdf(str(tmp))
    tmp.replace(out)
    print(f"{a.sampler}: {idata.posterior.sizes['chain']} × {idata.posterior.sizes['draw']} draws in "
          f"{idata.posterior.attrs['sampling_time_s']:.1f} s; written to {out}")
    print(f"next: slambayes diagnose {out}")


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
        print(f"wrote {out / (name + '.png')}")


def cmd_demo(a):
    from .demo import run_demo

    if Path(a.out).exists() and not Path(a.out).is_dir():
        raise CLIError(f"--out {a.out} is a file; the demo writes a folder")
    run_demo(Path(a.out), n_train=a.n_train, n_test=a.n_test, n_jobs=a.n_jobs, seed=a.seed)


def _noise_options(parser):
    from .likelihood import CALIBRATIONS, MODEL_ERRORS

    parser.add_argument("--model-error", default="auto", choices=MODEL_ERRORS,
                        help="auto: correlated if the model has it, else cv (Eq. 8, independent pixels); "
                             "fit and sample share the default")
    parser.add_argument("--calibration", default="auto", choices=CALIBRATIONS,
                        help="auto: the model's out-of-fold error calibration, if it has one")


def _rv_options(parser):
    parser.add_argument("--fit-rv", action="store_true",
                        help="also fit a residual radial velocity rv_resid (km/s) of the model spectrum")


def build_parser():
    p = argparse.ArgumentParser(prog="slambayes", description=__doc__)
    from . import __version__

    p.add_argument("--version", action="version", version=f"slambayes {__version__}")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    d = sub.add_parser("demo", help="run the whole journey on the embedded synthetic data", **fmt)
    d.add_argument("--out", default="slambayes-demo", help="output folder")
    d.add_argument("--n-train", type=_count(20), default=400, help="training spectra (≥ 20)")
    d.add_argument("--n-test", type=_count(2), default=300, help="test spectra (≥ 2)")
    d.add_argument("--n-jobs", type=int, default=-1)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train an emulator", **fmt)
    t.add_argument("--spectra", nargs="+", help="npz with labels, or LAMOST FITS files/folders")
    t.add_argument("--labels", help="label catalogue (CSV/FITS) for FITS spectra")
    t.add_argument("--label-names", help="comma-separated label columns, e.g. teff,logg,feh")
    t.add_argument("--key", default="filename", help="catalogue column to join on")
    t.add_argument("--demo", type=_count(0), default=0, metavar="N", help="train on N demo spectra instead")
    t.add_argument("--out", required=True, help="model file to write (.npz)")
    t.add_argument("--C", type=_floats, default=(1.0, 10.0, 100.0))
    t.add_argument("--gamma", type=_floats, default=(0.01, 0.1, 1.0))
    t.add_argument("--epsilon", type=_positive_float, default=0.05)
    t.add_argument("--cv", type=_count(0), default=5, help="CV folds (0: none; the calibration needs ≥ 2)")
    t.add_argument("--error-rank", type=lambda v: v if v == "auto" else int(v), default="auto",
                   help="components of the correlated model error kept (0: none; auto: n_train // 5, ≤ 100)")
    t.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="skip the error calibration from out-of-fold fits of the training stars")
    t.add_argument("--n-jobs", type=int, default=-1)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    f = sub.add_parser("fit", help="MAP labels for a batch of spectra", **fmt)
    f.add_argument("--model", required=True)
    f.add_argument("--spectra", nargs="+", required=True, help="npz, or LAMOST FITS files/folders")
    f.add_argument("--out", required=True, help="catalog (.fits, .ecsv or .parquet); re-run resumes")
    _noise_options(f)
    f.add_argument("--n-starts", type=_count(1), default=1)
    f.add_argument("--loss", default="linear", choices=("linear", "soft_l1", "cauchy"),
                   help="linear: Eq. 8; soft_l1/cauchy: robust against outlier pixels")
    f.add_argument("--f-scale", type=_positive_float, default=1.0,
                   help="residual (in total σ) beyond which a robust loss down-weights a pixel")
    f.add_argument("--chunk-size", type=_count(1), default=256)
    f.add_argument("--clip-sigma", type=float, default=5.0,
                   help="clip pixels off by more than this many total σ and refit (0: no clipping)")
    _rv_options(f)
    f.add_argument("--rv-window", type=_positive_float, default=20.0, help="|rv_resid| bound, km/s")
    f.add_argument("--n-jobs", type=int, default=1)
    f.add_argument("--scheduler", help="dask.distributed scheduler address")
    f.add_argument("--overwrite", action="store_true")
    f.set_defaults(func=cmd_fit)

    s = sub.add_parser("sample", help="posterior of one star (NUTS or emcee) → InferenceData .nc", **fmt)
    s.add_argument("--model", required=True)
    s.add_argument("--spectra", nargs="+", required=True, help="npz, or LAMOST FITS file(s)")
    s.add_argument("--star", help="id (meta column 'id') or 0-based index, if the input has several")
    s.add_argument("--prior", help="e.g. 'parallax:parallax_mas=2.1,parallax_err_mas=0.05,mag=11.2' "
                                    "or 'galacticmodel:l_deg=30,b_deg=60+trainingdensity'")
    s.add_argument("--sampler", default="nuts", choices=("nuts", "emcee"))
    s.add_argument("--num-warmup", type=_count(0), default=1000)
    s.add_argument("--num-samples", type=_count(1), default=1000)
    s.add_argument("--num-chains", type=_count(1), default=4)
    s.add_argument("--num-walkers", type=_count(2), default=32)
    _rv_options(s)
    _noise_options(s)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="netCDF file to write, e.g. star.nc")
    s.set_defaults(func=cmd_sample)

    g = sub.add_parser("diagnose", help="posterior vs LM Laplace table and plots for a .nc file", **fmt)
    g.add_argument("posterior", help="file written by `slambayes sample`")
    g.add_argument("--out-dir", help="folder for the plots (default: beside the file)")
    g.set_defaults(func=cmd_diagnose)

    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s")
    try:
        args.func(args)
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = (f"; finished chunks are kept in {out}.parts: run the same command again to resume"
                if args.command == "fit" else "")
        print(f"slambayes {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except (CLIError, OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        print(f"slambayes {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
