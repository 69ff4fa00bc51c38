"""Shared fixtures. Real-data tests read ../shared/data (beside the checkout).

With CI=true a missing data folder is a failure, not a skip: CI must prove the
real-data acceptance tests.
"""
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SLAMBAYES_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
BENCH = SHARED / "bench"


def need(path):
    """Return `path` if it exists; else fail under CI, skip elsewhere."""
    path = Path(path)
    if path.exists():
        return path
    msg = f"real data not found at {path} (expected ../shared/data beside the checkout)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def bench_datasets():
    """The benchmark protocol's loaders from ../shared/bench/datasets.py."""
    need(BENCH / "datasets.py")
    need(DATA)
    sys.path.insert(0, str(BENCH))
    import datasets
    return datasets


@pytest.fixture(scope="session")
def lamost_dir():
    return need(DATA / "lamost_dr1" / "spectra")


@pytest.fixture(scope="session")
def lamost_catalog():
    return need(DATA / "lamost_dr1" / "lasp_catalog.csv")


@pytest.fixture(scope="session")
def demo_small():
    """A small, quickly trained demo emulator and its training spectra."""
    from slambayes.datasets import make_demo
    from slambayes.emulator import Emulator
    from slambayes.preprocess import default_grid

    wave = default_grid(4800.0, 5300.0, 2.0)   # 251 px with Hβ and Mg b
    train = make_demo(250, snr=100.0, seed=11, wave=wave)
    em = Emulator(C=(3.0, 30.0), gamma=(0.1, 0.3), cv=3, n_jobs=1, progress=False).fit(train)
    return em, train


@pytest.fixture(scope="session")
def demo_calibrated(demo_small):
    """`demo_small`'s emulator (a copy) with its errors calibrated out of fold."""
    import copy

    from slambayes import calibrate

    em, train = demo_small
    return calibrate(copy.deepcopy(em), train, progress=False), train


@pytest.fixture(scope="session")
def floor_calibrated(demo_calibrated):
    """`demo_calibrated`'s emulator (a copy) whose calibration is only its floor, c = span / 40
    per label (a = w = 0: Δ = diag(c²) for every star), with no model error of its own: the
    density of stars drawn from the errors-in-variables model itself. Returns (emulator, the
    label box's middle, its span, c)."""
    import copy
    from dataclasses import replace

    em, _ = demo_calibrated
    em = copy.deepcopy(em)
    cal = em.calibration_
    mid, span = 0.5 * (em.label_min_ + em.label_max_), em.label_max_ - em.label_min_
    c = span / 40
    em.calibration_ = replace(cal, a=np.zeros_like(cal.a), w=np.zeros_like(cal.w), c=c, R=None,
                              stats={**cal.stats, "model_error": "none"})
    return em, mid, span, c


@pytest.fixture(scope="session")
def dwarf_emulator(bench_datasets):
    """Emulator trained (and its errors calibrated) on 600 generated dwarfs (dwarfsim protocol,
    every 4th selected pixel: ~400 px; (C, γ) by 3-fold CV from a 2 × 2 grid) and the dwarfsim split."""
    from slambayes import Emulator, Spectra, calibrate

    d = bench_datasets.load("dwarfsim", "main")
    pix = slice(None, None, 4)
    tr = Spectra(d["wave"][pix], d["train"]["flux"][:600, pix], d["train"]["ivar"][:600, pix],
                 labels=d["train"]["labels"][:600], label_names=d["label_names"])
    em = Emulator(C=(10.0, 100.0), gamma=(0.01, 0.1), cv=3, n_jobs=2, block_size=64,
                  progress=False).fit(tr)
    return calibrate(em, tr), d, pix


@pytest.fixture(autouse=True)
def _quiet_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HIERARCH.*")
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_engines_agree(a, b, names, sigmas=0.05, rel=0.05):
    """Two catalogs of the same spectra (scipy's engine `a`, the batched one `b`) give the same
    labels (|Δ| < `sigmas` σ), errors and covariance (within `rel`, per element in units of
    σ_i σ_j) and flags. Returns (max |Δ|/σ, max |σ_b/σ_a − 1|) for printing."""
    shift = max(float(np.max(np.abs(a[n] - b[n]) / a[n + "_err"])) for n in names)
    width = max(float(np.max(np.abs(b[n + "_err"] / a[n + "_err"] - 1))) for n in names)
    s = np.sqrt(np.diagonal(a["cov"], axis1=1, axis2=2))
    assert shift < sigmas and width < rel, (shift, width)
    assert np.all(np.abs(b["cov"] - a["cov"]) / (s[:, :, None] * s[:, None, :]) < rel)
    np.testing.assert_array_equal(a["flag"], b["flag"])
    return shift, width


def non_gaussianity(cat, names):
    """Per catalog row, how far its posterior summary is from MAP ± σ: max |mean − MAP| / σ plus
    max |std / σ − 1| over the labels (the summaries' own reading of laplace_ok)."""
    shift = np.max([np.abs(np.asarray(cat[n + "_mean"]) - cat[n]) / cat[n + "_err"] for n in names], 0)
    width = np.max([np.abs(np.asarray(cat[n + "_std"]) / cat[n + "_err"] - 1) for n in names], 0)
    return shift + width


def assert_bayes_product(em, spectra, cat, label, factors=(0.3, 3.0), nuts_factor=1.0, seed=3):
    """With a Gaussian prior N(m, s) (m one catalog σ off, s = factor × σ) on the catalog's most
    nearly Gaussian clean star (laplace_ok, 3 σ inside the label box, smallest importance shift), `fit_map(prior=)` and NUTS
    give the product of the catalog's Gaussian and the prior: mean within 0.05 σ, σ within 5 %;
    the catalog's posterior summary under the prior (its own Monte Carlo error about 0.05 σ)
    within 0.1 σ and 10 %. Returns the (relative shift, σ ratio) of NUTS for printing."""
    from slambayes import fit_map, sample
    from slambayes.priors import Gaussian

    ok = np.asarray(cat["laplace_ok"]) & (np.asarray(cat["flag"]) == 0)
    # the box (the training range) is part of the prior: a star whose posterior it cuts is not Gaussian
    for j, n in enumerate(em.label_names_):
        v, e = np.asarray(cat[n], float), np.asarray(cat[n + "_err"], float)
        ok &= (v - 3 * e > em.label_min_[j]) & (v + 3 * e < em.label_max_[j])
    bad = non_gaussianity(cat, em.label_names_)
    i = int(np.argmin(np.where(ok, bad, np.inf)))
    assert ok[i], "no clean laplace_ok star"
    m0, s0 = float(cat[label][i]), float(cat[label + "_err"][i])

    def product(m, s):
        w = 1 / s0**2 + 1 / s**2
        return (m0 / s0**2 + m / s**2) / w, w**-0.5
    for factor in factors:
        m, s = m0 + s0, factor * s0
        row = fit_map(em, spectra[i:i + 1], prior=Gaussian([label], [m], [s]), progress=False)[0]
        mb, sb = product(m, s)
        assert abs(row[label] - mb) < 0.05 * sb and abs(row[label + "_err"] / sb - 1) < 0.05, (factor, row[label], mb)
        assert abs(row[label + "_mean"] - mb) < 0.1 * sb and abs(row[label + "_std"] / sb - 1) < 0.1, \
            (factor, row[label + "_mean"], row[label + "_std"], mb, sb, row["posterior_method"])
    m, s = m0 + s0, nuts_factor * s0
    idata = sample(em, spectra[i:i + 1], prior=Gaussian([label], [m], [s]), num_warmup=500, num_samples=1500,
                   num_chains=4, seed=seed, progress=False)
    d = idata.posterior[label].values.ravel()
    mb, sb = product(m, s)
    shift, ratio = (d.mean() - mb) / sb, d.std() / sb
    assert abs(shift) < 0.05 and abs(ratio - 1) < 0.05, (shift, ratio)
    return shift, ratio
