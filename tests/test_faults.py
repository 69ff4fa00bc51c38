"""Bad inputs and faults, tried from the command line as a new user would.

Each case sets up its files, runs `slambayes …` in-process and asserts the exit code and
that the message names the file, star or argument and says what to do; none may print a
traceback, and a case that should refuse must leave nothing written. Faults that need a
running process (SIGKILL, a second run holding the lock) are at the end.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from astropy.table import Table

from slambayes import Spectra
from slambayes.cli import main
from slambayes.datasets import make_demo


@pytest.fixture(scope="module")
def files(demo_small, tmp_path_factory):
    """A trained model and a few spectra to fit, on disk."""
    em, train = demo_small
    d = tmp_path_factory.mktemp("faults")
    em.save(d / "model.npz")
    make_demo(4, snr=50.0, seed=7, wave=em.wave_).to_npz(d / "stars.npz")
    train[:60].to_npz(d / "train.npz")
    return d


def _npz(path, **arrays):
    np.savez(path, **arrays)


def _stars(files, tmp, name="s.npz", **change):
    """The four test spectra with some arrays replaced (written to tmp/name)."""
    sp = Spectra.from_npz(files / "stars.npz")
    arrays = dict(wave=sp.wave, flux=sp.flux, ivar=sp.ivar, meta__id=np.asarray(sp.meta["id"]).astype(str))
    arrays.update(change)
    _npz(tmp / name, **{k: v for k, v in arrays.items() if v is not None})


def _train(files, tmp, edit):
    sp = Spectra.from_npz(files / "train.npz")
    labels, flux, ivar = sp.labels.copy(), sp.flux.copy(), sp.ivar.copy()
    edit(labels, flux, ivar)
    _npz(tmp / "t.npz", wave=sp.wave, flux=flux, ivar=ivar, labels=labels,
         label_names=np.array(sp.label_names), meta__id=np.asarray(sp.meta["id"]).astype(str))


def _model(files, tmp, **change):
    """The model file with some arrays replaced (None: removed)."""
    with np.load(files / "model.npz", allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    arrays.update(change)
    _npz(tmp / "bad_model.npz", **{k: v for k, v in arrays.items() if v is not None})


def _model_header(files, tmp, **change):
    """The model file with entries of its JSON header replaced."""
    import json

    with np.load(files / "model.npz", allow_pickle=False) as d:
        header = dict(json.loads(str(d["header"])), **change)
        _model(files, tmp, header=np.array(json.dumps(header)))


def _truncate(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * fraction)])


@dataclass
class Case:
    argv: str                       # {m} model, {s} stars, {t} tmp folder, {f} the fixture folder
    code: int
    says: tuple                     # substrings of the message (stderr), all required
    setup: object = None            # setup(files, tmp)
    out: str = ""                   # with code ≠ 0: this file must not have been written
    expect_rows: int = field(default=-1)   # with code 0: rows of the catalog {t}/c.fits


FIT = "fit --model {m} --spectra {s} --out {t}/c.fits"
SAMPLE = "sample --model {m} --spectra {s} --out {t}/p.nc --num-warmup 20 --num-samples 20 --num-chains 1"
CASES = {
    # --- arguments: refused by the parser, naming the option and what is allowed
    "fit --n-starts 0": Case(FIT + " --n-starts 0", 2, ("--n-starts", "must be ≥ 1")),
    "fit --n-starts abc": Case(FIT + " --n-starts abc", 2, ("--n-starts", "expected an integer")),
    "fit --chunk-size 0": Case(FIT + " --chunk-size 0", 2, ("--chunk-size", "must be ≥ 1")),
    "fit --chunk-size -5": Case(FIT + " --chunk-size -5", 2, ("--chunk-size", "must be ≥ 1")),
    "fit --f-scale 0": Case(FIT + " --f-scale 0", 2, ("--f-scale", "positive")),
    "fit --f-scale nan": Case(FIT + " --f-scale nan", 2, ("--f-scale", "positive")),
    "fit --rv-window -1": Case(FIT + " --rv-window -1", 2, ("--rv-window", "positive")),
    "fit --loss huber": Case(FIT + " --loss huber", 2, ("--loss", "invalid choice", "soft_l1")),
    "fit --model-error big": Case(FIT + " --model-error big", 2, ("--model-error", "invalid choice", "correlated")),
    "fit --calibration yes": Case(FIT + " --calibration yes", 2, ("--calibration", "invalid choice")),
    "fit without --out": Case("fit --model {m} --spectra {s}", 2, ("--out", "required")),
    "fit with an unknown option": Case(FIT + " --starts 2", 2, ("unrecognized arguments", "--starts")),
    "sample --num-chains 0": Case(SAMPLE + " --num-chains 0", 2, ("--num-chains", "must be ≥ 1")),
    "sample --num-samples 0": Case(SAMPLE + " --num-samples 0", 2, ("--num-samples", "must be ≥ 1")),
    "sample --num-walkers 1": Case(SAMPLE + " --num-walkers 1", 2, ("--num-walkers", "must be ≥ 2")),
    "sample --sampler hmc": Case(SAMPLE + " --sampler hmc", 2, ("--sampler", "invalid choice", "nuts")),
    "demo --n-test 1": Case("demo --out {t}/d --n-test 1", 2, ("--n-test", "must be ≥ 2")),
    "demo --n-train 5": Case("demo --out {t}/d --n-train 5", 2, ("--n-train", "must be ≥ 20")),
    "train --C abc": Case("train --demo 30 --out {t}/m.npz --C abc", 2, ("--C", "comma-separated numbers")),
    "train --C 0": Case("train --demo 30 --out {t}/m.npz --C 0", 2, ("C", "positive"), out="m.npz"),
    "train --gamma -1": Case("train --demo 30 --out {t}/m.npz --gamma -1", 2, ("gamma", "positive"), out="m.npz"),
    "train --epsilon 0": Case("train --demo 30 --out {t}/m.npz --epsilon 0", 2, ("--epsilon", "positive")),
    "train --cv -1": Case("train --demo 30 --out {t}/m.npz --cv -1", 2, ("--cv", "must be ≥ 0")),
    "train --cv 1": Case("train --demo 30 --out {t}/m.npz --cv 1", 2, ("cv", "0 (no cross-validation) or a number of folds ≥ 2"), out="m.npz"),
    "train --compression -1": Case("train --demo 30 --out {t}/m.npz --compression -1", 2,
                                   ("--compression", "must be a number ≥ 0")),
    "train on an unreachable dask scheduler": Case("train --demo 30 --out {t}/m.npz --scheduler tcp://127.0.0.1:9", 2,
                                                   ("tcp://127.0.0.1:9", "cannot reach"), out="m.npz"),
    "train --error-rank abc": Case("train --demo 30 --out {t}/m.npz --error-rank abc", 2, ("--error-rank",)),
    "train --demo -3": Case("train --demo -3 --out {t}/m.npz", 2, ("--demo", "must be ≥ 0")),
    "train with no data": Case("train --out {t}/m.npz", 2, ("--spectra", "--demo"), out="m.npz"),
    "no command": Case("", 2, ("required", "command")),
    "unknown command": Case("predict", 2, ("invalid choice", "predict")),
    # --- outputs: checked before any work
    "train --out in a missing folder": Case("train --demo 30 --out {t}/nope/m.npz", 2, ("nope", "does not exist")),
    "train --out a folder": Case("train --demo 30 --out {t}", 2, ("is a directory",)),
    "train --out .pkl": Case("train --demo 30 --out {t}/m.pkl", 2, ("m.pkl", "must end in .npz")),
    "fit --out .txt": Case("fit --model {m} --spectra {s} --out {t}/c.txt", 2, ("c.txt", ".fits")),
    "fit --out in a missing folder": Case("fit --model {m} --spectra {s} --out {t}/no/c.fits", 2, ("does not exist",)),
    "fit --out a folder": Case("fit --model {m} --spectra {s} --out {t}", 2, ("is a directory",)),
    "sample --out a folder": Case("sample --model {m} --spectra {s} --out {t}", 2, ("is a directory",)),
    "sample --out .txt": Case("sample --model {m} --spectra {s} --out {t}/p.txt", 2, ("p.txt", ".nc")),
    "demo --out a file": Case("demo --out {f}/stars.npz", 2, ("stars.npz", "is a file")),
    # --- the model file
    "model file missing": Case("fit --model {t}/none.npz --spectra {s} --out {t}/c.fits", 2, ("none.npz",),
                               out="c.fits"),
    "model file is garbage": Case("fit --model {t}/bad_model.npz --spectra {s} --out {t}/c.fits", 2,
                                  ("bad_model.npz",), out="c.fits",
                                  setup=lambda f, t: (t / "bad_model.npz").write_bytes(b"not a zip")),
    "model file is a spectra file": Case("fit --model {s} --spectra {s} --out {t}/c.fits", 2, ("stars.npz",),
                                         out="c.fits"),
    "model file truncated": Case("fit --model {t}/bad_model.npz --spectra {s} --out {t}/c.fits", 2,
                                 ("bad_model.npz",), out="c.fits",
                                 setup=lambda f, t: _truncate(f / "model.npz", t / "bad_model.npz")),
    "model dual_coef_ of the wrong shape": Case(
        "fit --model {t}/bad_model.npz --spectra {s} --out {t}/c.fits", 2, ("bad_model.npz", "dual_coef_"),
        out="c.fits", setup=lambda f, t: _model(f, t, dual_coef_=np.zeros((3, 3)))),
    "model without wave_": Case("fit --model {t}/bad_model.npz --spectra {s} --out {t}/c.fits", 2,
                                ("bad_model.npz", "wave_"), out="c.fits",
                                setup=lambda f, t: _model(f, t, wave_=None)),
    "model of a future format": Case("fit --model {t}/bad_model.npz --spectra {s} --out {t}/c.fits", 2,
                                     ("bad_model.npz", "schema", "train the model again"), out="c.fits",
                                     setup=lambda f, t: _model_header(f, t, schema="slambayes-model/99")),
    # --- the spectra to fit
    "spectra file missing": Case("fit --model {m} --spectra {t}/none.npz --out {t}/c.fits", 2, ("none.npz",),
                                 out="c.fits"),
    "spectra file is garbage": Case("fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2, ("s.npz", "npz"),
                                    out="c.fits", setup=lambda f, t: (t / "s.npz").write_bytes(b"junk")),
    "spectra npz without flux": Case("fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2,
                                     ("s.npz", "'flux'"), out="c.fits",
                                     setup=lambda f, t: _stars(f, t, flux=None)),
    "spectra flux with the wrong pixel count": Case(
        "fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2, ("s.npz", "flux"), out="c.fits",
        setup=lambda f, t: _stars(f, t, flux=np.ones((4, 7)))),
    "spectra truncated": Case("fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2, ("s.npz",),
                              out="c.fits", setup=lambda f, t: _truncate(f / "stars.npz", t / "s.npz", 0.7)),
    "spectra wave decreasing": Case(
        "fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2, ("s.npz", "increasing"), out="c.fits",
        setup=lambda f, t: _stars(f, t, wave=np.linspace(5300, 4800, 251))),
    "spectra with no star": Case(
        "fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2, ("0 spectra",), out="c.fits",
        setup=lambda f, t: _stars(f, t, flux=np.ones((0, 251)), ivar=np.ones((0, 251)),
                                  meta__id=np.array([], str))),
    "spectra outside the model's wavelengths": Case(
        "fit --model {m} --spectra {t}/s.npz --out {t}/c.fits", 2, ("s.npz", "outside the model's", "right model"),
        out="c.fits", setup=lambda f, t: _stars(f, t, wave=np.linspace(6000, 6500, 251))),
    "spectra a folder without FITS": Case("fit --model {m} --spectra {t} --out {t}/c.fits", 2,
                                          ("no",), out="c.fits"),
    "spectra a text file": Case("fit --model {m} --spectra {t}/x.txt --out {t}/c.fits", 2, ("x.txt",),
                                out="c.fits", setup=lambda f, t: (t / "x.txt").write_text("1 2 3")),
    # bad stars in a good file: flagged rows, the batch goes on
    "a star with NaN flux": Case(FIT.replace("{s}", "{t}/s.npz"), 0, (), expect_rows=4, setup=lambda f, t: _stars(
        f, t, flux=np.where(np.arange(4)[:, None] == 1, np.nan, Spectra.from_npz(f / "stars.npz").flux))),
    "a star with no good pixel": Case(FIT.replace("{s}", "{t}/s.npz"), 0, (), expect_rows=4, setup=lambda f, t: _stars(
        f, t, ivar=np.where(np.arange(4)[:, None] == 2, 0.0, Spectra.from_npz(f / "stars.npz").ivar))),
    "a star with flux ×1e30": Case(FIT.replace("{s}", "{t}/s.npz"), 0, (), expect_rows=4, setup=lambda f, t: _stars(
        f, t, flux=Spectra.from_npz(f / "stars.npz").flux * np.array([1, 1, 1, 1e30])[:, None])),
    # --- the training set
    "training npz without labels": Case("train --spectra {t}/s.npz --out {t}/m.npz", 2, ("s.npz", "labels"),
                                        out="m.npz", setup=lambda f, t: _stars(f, t)),
    "training set with a constant label": Case(
        "train --spectra {t}/t.npz --out {t}/m.npz --cv 2 --C 10 --gamma 0.1", 2, ("t.npz", "['feh']", "single value"), out="m.npz",
        setup=lambda f, t: _train(f, t, lambda lab, fl, iv: lab.__setitem__((slice(None), 2), 0.0))),
    "training set with a NaN label": Case(
        "train --spectra {t}/t.npz --out {t}/m.npz --cv 2 --C 10 --gamma 0.1", 2, ("t.npz", "NaN", "demo-11-"), out="m.npz",
        setup=lambda f, t: _train(f, t, lambda lab, fl, iv: lab.__setitem__((3, 0), np.nan))),
    "training set with no good pixel": Case(
        "train --spectra {t}/t.npz --out {t}/m.npz --cv 2 --C 10 --gamma 0.1", 2, ("t.npz", "60 with no good pixel"), out="m.npz",
        setup=lambda f, t: _train(f, t, lambda lab, fl, iv: iv.__setitem__(slice(None), 0.0))),
    "training FITS without --labels": Case("train --spectra {t}/a.fits --out {t}/m.npz", 2, ("--labels",),
                                           setup=lambda f, t: (t / "a.fits").write_bytes(b"x")),
    "training label catalogue missing": Case(
        "train --spectra {t}/a.fits --labels {t}/none.csv --label-names teff --out {t}/m.npz", 2, ("none.csv",),
        setup=lambda f, t: (t / "a.fits").write_bytes(b"x"), out="m.npz"),
    # --- sampling one star
    "sample several stars without --star": Case(SAMPLE, 2, ("4 spectra", "--star")),
    "sample a star that is not there": Case(SAMPLE + " --star nobody", 2, ("nobody", "--star", "0-based")),
    "sample a star index out of range": Case(SAMPLE + " --star 9", 2, ("'9'", "4 spectra")),
    "sample with an unknown prior": Case(SAMPLE + " --star 0 --prior zodiac", 2, ("zodiac",)),
    "sample a prior argument without =": Case(SAMPLE + " --star 0 --prior gaussian:feh", 2, ("key=value",)),
    "sample a Gaussian prior with σ < 0": Case(
        SAMPLE + " --star 0 --prior gaussian:label_names=feh,mean=0,sigma=-0.1", 2, ("sigma", "positive")),
    "sample a parallax prior without its magnitude": Case(
        SAMPLE + " --star 0 --prior parallax:parallax_mas=1.5", 2, ("parallax",)),
    "sample a prior value that is not a number": Case(
        SAMPLE + " --star 0 --prior gaussian:label_names=feh,mean=abc,sigma=0.1", 2, ("--prior", "abc")),
    "sample a Gaussian prior with σ = 0": Case(
        SAMPLE + " --star 0 --prior gaussian:label_names=feh,mean=0,sigma=0", 2, ("['feh']", "sigma", "positive")),
    "sample a prior with one mean for two labels": Case(
        SAMPLE + " --star 0 --prior gaussian:label_names=feh;logg,mean=0,sigma=0.1", 2,
        ("['feh', 'logg']", "one mean and one sigma per label")),
    "sample a uniform prior with high < low": Case(
        SAMPLE + " --star 0 --prior uniform:label_names=feh,low=1,high=0", 2, ("--prior", "high > low")),
    "train an empty C grid": Case("train --demo 30 --out {t}/m.npz --C ,", 2, ("--C", "comma-separated numbers")),
    "fit on an unreachable dask scheduler": Case(FIT + " --scheduler tcp://127.0.0.1:9", 2,
                                                 ("tcp://127.0.0.1:9", "cannot reach"), out="c.fits"),
    "diagnose a missing file": Case("diagnose {t}/none.nc", 2, ("none.nc",)),
    "diagnose a file that is not netCDF": Case("diagnose {t}/x.nc", 2, ("x.nc", "netCDF"),
                                               setup=lambda f, t: (t / "x.nc").write_bytes(b"junk")),
}


def _run(argv, files, tmp, capsys):
    fmt = dict(m=files / "model.npz", s=files / "stars.npz", t=tmp, f=files)
    code = main([a.format(**fmt) for a in argv.split()])
    return code, capsys.readouterr()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, files, tmp_path, capsys):
    case = CASES[name]
    if case.setup is not None:
        case.setup(files, tmp_path)
    try:
        code, out = _run(case.argv, files, tmp_path, capsys)
    except SystemExit as exc:                     # the parser's refusals
        code, out = exc.code, capsys.readouterr()
    assert code == case.code, (name, out.err)
    assert "Traceback" not in out.err + out.out
    for text in case.says:
        assert text in out.err, (name, text, out.err)
    if case.code != 0:
        assert case.out == "" or not (tmp_path / case.out).exists(), name
    if case.expect_rows >= 0:
        cat = Table.read(tmp_path / "c.fits")
        assert len(cat) == case.expect_rows
        bad = np.asarray(cat["flag"]) != 0
        assert bad.sum() == 1 and np.isfinite(np.asarray(cat["teff"])[~bad]).all()
        assert not np.isnan(np.asarray(cat["chi2"])[~bad]).any()


def _lamost_variant(src, dst, edit):
    from astropy.io import fits

    with fits.open(src) as hdul:
        edit(hdul)
        hdul.writeto(dst)


def _one_pixel(hdul):
    hdul[0].data = hdul[0].data[:, :1].copy()


LAMOST_FAULTS = {
    "reversed wavelength grid": (lambda h: h[0].header.__setitem__("COEFF1", -h[0].header["COEFF1"]),
                                 "not increasing"),
    "one pixel": (_one_pixel, "1 pixel"),
    "no redshift": (lambda h: h[0].header.__delitem__("Z"), "no finite redshift Z"),
    "not FITS": (None, "cannot read FITS"),
}


@pytest.mark.parametrize("fault", list(LAMOST_FAULTS))
def test_a_bad_lamost_file_is_skipped_naming_it_and_the_rest_is_fitted(fault, files, lamost_dir, tmp_path, capsys):
    edit, says = LAMOST_FAULTS[fault]
    good = sorted(lamost_dir.iterdir())[:2]
    batch = tmp_path / "batch"
    batch.mkdir()
    for p in good:
        (batch / p.name).symlink_to(p)
    bad = batch / "spec-bad.fits"
    if edit is None:
        bad.write_bytes(b"SIMPLE  = junk")
    else:
        _lamost_variant(good[0], bad, edit)
    assert main(["-q", "fit", "--model", str(files / "model.npz"), "--spectra", str(batch),
                 "--out", str(tmp_path / "c.fits")]) == 0
    err = capsys.readouterr().err
    assert err == ""                                              # -q: errors only
    assert main(["fit", "--model", str(files / "model.npz"), "--spectra", str(batch),
                 "--out", str(tmp_path / "c.fits")]) == 0          # the finished catalog is returned
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    cat = Table.read(tmp_path / "c.fits")
    assert len(cat) == 2 and sorted(cat["id"]) == sorted(p.name for p in good)
    assert main(["fit", "--model", str(files / "model.npz"), "--spectra", str(batch),
                 "--out", str(tmp_path / "d.fits")]) == 0
    err = capsys.readouterr().err
    assert "spec-bad.fits" in err and says in err, err


def test_sigterm_stops_a_fit_cleanly_and_the_rerun_resumes(many, tmp_path):
    out = tmp_path / "t.fits"
    proc = subprocess.Popen(_fit_argv(many, out, "--n-jobs", "2", "--chunk-size", "20"), stderr=subprocess.PIPE,
                            text=True)
    _wait_for_parts(out, proc)
    tree = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + signal.SIGTERM
    assert "terminated" in err and "run the same command again to resume" in err and "Traceback" not in err
    t0 = time.time()
    while any(_alive(p) for p in tree) and time.time() - t0 < 30:
        time.sleep(0.5)
    assert not [p for p in tree if _alive(p)]
    assert subprocess.run(_fit_argv(many, out, "--chunk-size", "50")).returncode == 0
    assert len(Table.read(out)) == 600


def test_the_suite_holds_at_least_sixty_faults():
    assert len(CASES) + len(LAMOST_FAULTS) + len(RUN_FAULTS) >= 60


# ------------------------------------------------------------------ faults of a running fit
def _fit_argv(files, out, *extra):
    return [sys.executable, "-m", "slambayes.cli", "-q", "fit", "--model", str(files / "model.npz"),
            "--spectra", str(files / "many.npz"), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def many(files):
    from slambayes import Emulator

    em = Emulator.load(files / "model.npz")
    make_demo(600, snr=40.0, seed=8, wave=em.wave_).to_npz(files / "many.npz")
    return files


def _descendants(pid):
    """pids of the process tree under `pid` (from /proc, Linux)."""
    kids = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out += kids.get(p, [])
        todo += kids.get(p, [])
    return out


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for_parts(out, proc, n=1, timeout=120):
    parts = out.with_name(out.name + ".parts")
    t0 = time.time()
    while len(list(parts.glob("rows-*.fits"))) < n:
        assert proc.poll() is None, "the fit ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_kill_9_of_a_two_process_fit_leaves_no_process_alive(many, tmp_path):
    out = tmp_path / "k.fits"
    proc = subprocess.Popen(_fit_argv(many, out, "--n-jobs", "2", "--chunk-size", "20"))
    _wait_for_parts(out, proc)
    tree = _descendants(proc.pid)
    assert len(tree) >= 2                          # the two workers (and joblib's trackers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while any(_alive(p) for p in tree) and time.time() - t0 < 30:
        time.sleep(0.5)
    assert not [p for p in tree if _alive(p)], "workers of the killed run are still alive 30 s later"
    # and nothing written is lost: the rerun resumes from the parts the killed run left
    done = len(list(out.with_name(out.name + ".parts").glob("rows-*.fits")))
    assert done >= 1
    assert subprocess.run(_fit_argv(many, out, "--n-jobs", "2", "--chunk-size", "20")).returncode == 0
    assert len(Table.read(out)) == 600


def test_a_second_run_on_the_same_output_is_refused_while_the_first_writes(many, tmp_path, capsys):
    out = tmp_path / "l.fits"
    proc = subprocess.Popen(_fit_argv(many, out, "--chunk-size", "20"))
    try:
        _wait_for_parts(out, proc)
        code = main(["-q", "fit", "--model", str(many / "model.npz"), "--spectra", str(many / "many.npz"),
                     "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and "another run is writing" in err and str(out) in err
    finally:
        proc.kill()
        proc.wait()


def test_a_resume_with_another_model_or_renamed_ids_is_refused(many, tmp_path, capsys):
    from slambayes import Emulator

    out = tmp_path / "r.fits"
    sp = Spectra.from_npz(many / "stars.npz")
    assert main(["-q", "fit", "--model", str(many / "model.npz"), "--spectra", str(many / "stars.npz"),
                 "--out", str(out)]) == 0
    em = Emulator.load(many / "model.npz")
    em.dual_coef_ = em.dual_coef_ * 1.01
    em.save(tmp_path / "other.npz")
    assert main(["fit", "--model", str(tmp_path / "other.npz"), "--spectra", str(many / "stars.npz"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different run" in err and "--overwrite" in err and str(out) in err
    sp.meta["id"] = [f"x{i}" for i in range(sp.n_star)]
    sp.to_npz(tmp_path / "renamed.npz")
    assert main(["fit", "--model", str(many / "model.npz"), "--spectra", str(tmp_path / "renamed.npz"),
                 "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["-q", "fit", "--model", str(many / "model.npz"), "--spectra", str(tmp_path / "renamed.npz"),
                 "--out", str(out), "--overwrite"]) == 0
    assert list(Table.read(out)["id"]) == [f"x{i}" for i in range(sp.n_star)]


RUN_FAULTS = [test_kill_9_of_a_two_process_fit_leaves_no_process_alive,
              test_sigterm_stops_a_fit_cleanly_and_the_rerun_resumes,
              test_a_second_run_on_the_same_output_is_refused_while_the_first_writes,
              test_a_resume_with_another_model_or_renamed_ids_is_refused]
