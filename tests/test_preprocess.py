import warnings

import numpy as np
import pytest

from slambayes import Spectra, preprocess as P, read_lamost
from slambayes.datasets import demo_spectrum


@pytest.fixture(scope="module")
def raw_and_pipeline(lamost_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_lamost(lamost_dir, flux="raw"), read_lamost(lamost_dir, flux="normalized")


def test_normalization_matches_lamost_pipeline(raw_and_pipeline):
    raw, pipe = raw_and_pipeline
    ours = P.normalize(raw)
    sel = np.asarray(raw.meta["snr_g"]) > 20
    band = (raw.wave >= 4000) & (raw.wave <= 5800)
    both = (ours.good & pipe.good)[sel][:, band]
    diff = np.abs(ours.flux - pipe.flux)[sel][:, band][both]
    med = float(np.median(diff))
    print(f"median |ours - pipeline| over 4000-5800 A, {sel.sum()} spectra S/N_g>20: {med:.4f}")
    assert med < 0.01          # issue asks < 0.03; we reach ~0.006
    assert np.isfinite(ours.flux).all()


def _line_offsets(spectra, lab):
    grid = np.arange(lab - 15, lab + 15, 0.05)
    r = P.resample(spectra, grid)
    core = np.abs(grid - lab) < 6
    out = []
    for f, iv in zip(r.flux, r.ivar):
        d = np.where(iv[core] > 0, np.clip(1 - f[core], 0, None), 0.0)
        if d.sum() > 0:
            out.append((d * grid[core]).sum() / d.sum() - lab)
    return np.array(out)


@pytest.mark.parametrize("name,lab", [("H alpha", 6564.61), ("H beta", 4862.68)])
def test_rest_frame_puts_lines_at_laboratory_wavelength(raw_and_pipeline, name, lab):
    raw, _ = raw_and_pipeline
    good = raw[np.asarray(raw.meta["snr_g"]) > 20]
    norm = P.normalize(good)
    rest = P.to_rest_frame(norm, z=np.asarray(norm.meta["z"]))
    off = _line_offsets(rest, lab)
    print(f"{name}: median |offset| in rest frame {np.median(np.abs(off)):.3f} A ({off.size} stars)")
    assert np.median(np.abs(off)) < 0.5
    assert abs(np.median(off)) < 0.5


def test_rest_frame_recovers_a_known_shift():
    wave = P.default_grid(4800, 5300, 0.5)
    clean = demo_spectrum([[5000, 4.0, 0.0]], wave=wave)
    rv = 150.0
    obs_wave = wave * (1 + rv / P.C_KMS)
    s = Spectra(obs_wave, clean, np.full_like(clean, 1e4))
    back = P.to_rest_frame(s, rv_kms=rv, wave=wave[20:-20])
    assert np.max(np.abs(back.flux - clean[:, 20:-20])) < 5e-3


def test_resample_propagates_ivar_and_masks_outside():
    wave = np.arange(10.0)
    s = Spectra(wave, np.arange(10.0)[None], np.full((1, 10), 4.0))
    r = P.resample(s, np.array([-1.0, 2.0, 2.5, 9.5]))
    assert r.ivar[0, 0] == 0 and r.ivar[0, 3] == 0           # outside coverage
    assert r.flux[0, 2] == pytest.approx(2.5)
    assert r.ivar[0, 1] == pytest.approx(4.0)                 # on a pixel: unchanged
    assert r.ivar[0, 2] == pytest.approx(1 / (0.25 / 4 + 0.25 / 4))


def test_interpolation_next_to_a_bad_pixel_is_masked():
    wave = np.arange(10.0)
    iv = np.full((1, 10), 1.0)
    iv[0, 5] = 0
    r = P.resample(Spectra(wave, np.ones((1, 10)), iv), np.array([3.0, 4.5, 5.5, 6.0]))
    assert r.ivar[0].tolist()[1:3] == [0.0, 0.0] and r.ivar[0, 0] > 0 and r.ivar[0, 3] > 0


def test_all_masked_spectrum_normalizes_to_no_data_not_nan():
    wave = P.default_grid(4000, 4500)
    flux = np.ones((2, wave.size)) * 5
    ivar = np.ones_like(flux)
    ivar[1] = 0
    out = P.normalize(Spectra(wave, flux, ivar))
    assert np.isfinite(out.flux).all()
    assert (out.ivar[1] == 0).all()
    assert out.flux[0] == pytest.approx(1.0)


def test_normalize_recovers_a_known_continuum(rng):
    wave = P.default_grid()
    clean = demo_spectrum([[5200, 4.3, -0.3], [6500, 4.0, 0.2]], wave=wave)
    cont = 1e3 * (1 + 0.3 * np.sin(wave / 400.0))[None] * np.array([[1.0], [2.0]])
    snr = 200.0
    flux = clean * cont + rng.normal(size=clean.shape) * cont / snr
    s = Spectra(wave, flux, (snr / cont) ** 2)
    out = P.normalize(s)
    assert np.median(np.abs(out.flux - clean)) < 0.01


def test_masks():
    wave = P.default_grid(4000, 4010)
    s = Spectra(wave, np.ones((1, wave.size)), np.ones((1, wave.size)))
    m = np.zeros((1, wave.size), int)
    m[0, 3] = 8
    assert P.mask_bits(s, m).ivar[0, 3] == 0
    assert (P.mask_ranges(s, [(4004.5, 4006.5)]).ivar[0] == 0).sum() == 2
