"""A broken training set is refused or cleaned before any training, with messages that name the stars."""
import numpy as np
import pytest

from slambayes import Emulator, SpectraWarning, calibrate
from slambayes.datasets import make_demo
from slambayes.preprocess import default_grid
from slambayes.training_set import check_training_set


@pytest.fixture
def small():
    return make_demo(40, snr=100.0, seed=3, wave=default_grid(4800.0, 5000.0, 4.0))


def test_constant_or_nan_labels_are_refused(small):
    lab = small.labels.copy()
    lab[:, 2] = -0.5
    with pytest.raises(ValueError, match=r"\['feh'\] take a single value"):
        check_training_set(small.replace(labels=lab))
    lab = small.labels.copy()
    lab[7, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite for star"):
        Emulator(C=10.0, gamma=0.1, cv=0, progress=False).fit(small.replace(labels=lab))


def test_unusable_and_duplicated_stars_are_dropped_by_name(small):
    flux, ivar, lab = small.flux.copy(), small.ivar.copy(), small.labels.copy()
    ivar[3] = 0.0                                   # no good pixel
    flux[5] *= 1e30                                 # absurd flux
    flux[8, 4] = np.nan                             # NaN: `Spectra` makes it a bad pixel, the star stays
    flux[20], ivar[20], lab[20] = flux[10], ivar[10], lab[10]     # a duplicate of star 10
    sp = small.replace(flux=flux, ivar=ivar, labels=lab)
    ids = list(sp.meta["id"])
    with pytest.warns(SpectraWarning) as rec:
        kept = check_training_set(sp)
    text = " ".join(str(w.message) for w in rec)
    for i, why in ((3, "no good pixel"), (5, "median flux"), (20, "duplicate")):
        assert why in text and ids[i] in text, (i, why, text)
    assert kept.n_star == 37 and ids[8] in list(kept.meta["id"]) and ids[10] in list(kept.meta["id"]) and ids[20] not in list(kept.meta["id"])
    # the model trains on the cleaned set, and calibrate() recognizes the original as its training set
    with pytest.warns(SpectraWarning):
        em = Emulator(C=10.0, gamma=0.1, cv=2, n_jobs=1, progress=False).fit(sp)
    assert em.X_train_.shape[0] == 37
    calibrate(em, sp, progress=False)
    assert em.calibration_ is not None


def test_too_few_usable_stars_is_an_error(small):
    ivar = small.ivar.copy()
    ivar[2:] = 0.0
    with pytest.warns(SpectraWarning), pytest.raises(ValueError, match="at least 3 usable training stars, got 2"):
        check_training_set(small.replace(ivar=ivar))


@pytest.mark.parametrize("kw, message", [
    (dict(C=()), "C must be one or more positive numbers"),
    (dict(gamma=(0.1, -1.0)), "gamma must be one or more positive numbers"),
    (dict(epsilon=float("nan")), "epsilon must be a number"),
])
def test_hyperparameter_grids_are_checked(kw, message):
    sp = make_demo(20, seed=1, wave=default_grid(5000.0, 5100.0, 5.0))
    with pytest.raises(ValueError, match=message):
        Emulator(cv=2, progress=False, **kw).fit(sp)


def test_fitting_no_spectra_is_a_clear_error(demo_small):
    from slambayes import Spectra, fit_map

    em, _ = demo_small
    with pytest.raises(ValueError, match="no spectra to fit"):
        fit_map(em, Spectra(em.wave_, np.empty((0, em.wave_.size)), np.empty((0, em.wave_.size))), progress=False)
