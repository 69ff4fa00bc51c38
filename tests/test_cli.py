import subprocess
import sys

import numpy as np
import pytest
from astropy.table import Table

from slambayes.cli import main
from slambayes.datasets import make_demo
from slambayes.preprocess import default_grid


def test_train_and_fit_on_npz(tmp_path, capsys):
    wave = default_grid(4800, 5300, 2.0)
    make_demo(120, snr=100.0, seed=1, wave=wave).to_npz(tmp_path / "train.npz")
    test = make_demo(10, snr=50.0, seed=2, wave=wave)
    test.to_npz(tmp_path / "test.npz")
    assert main(["train", "--spectra", str(tmp_path / "train.npz"), "--out", str(tmp_path / "m.npz"),
                 "--C", "10", "--gamma", "0.1", "--cv", "3", "--n-jobs", "1"]) == 0
    assert main(["fit", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "test.npz"),
                 "--out", str(tmp_path / "cat.fits")]) == 0
    cat = Table.read(tmp_path / "cat.fits")
    assert len(cat) == 10 and list(cat["id"]) == list(test.meta["id"])
    assert np.median(np.abs(cat["teff"] - test.labels[:, 0])) < 300
    assert "catalog written" in capsys.readouterr().out
    # -q: nothing but errors (no messages, warnings or progress bars); -v: the messages too
    fit = ["fit", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "test.npz")]
    assert main(["-q"] + fit + ["--out", str(tmp_path / "quiet.fits")]) == 0
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    assert main(["-q"] + fit + ["--out", str(tmp_path / "nodir" / "x.fits")]) == 2
    assert "nodir" in capsys.readouterr().err
    assert main(["-v"] + fit + ["--out", str(tmp_path / "loud.fits")]) == 0
    assert "catalog written" in capsys.readouterr().out


def test_train_on_demo_data(tmp_path):
    assert main(["train", "--demo", "60", "--out", str(tmp_path / "d.npz"), "--C", "10",
                 "--gamma", "0.1", "--cv", "2", "--n-jobs", "1"]) == 0
    assert (tmp_path / "d.npz").exists()


def test_clear_errors_and_exit_codes(tmp_path, capsys):
    assert main(["fit", "--model", str(tmp_path / "nope.npz"), "--spectra", "x.npz",
                 "--out", str(tmp_path / "c.fits")]) == 2
    assert "nope.npz" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["train", "--spectra", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "m.npz")]) == 2
    assert "bad.npz" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "slambayes.cli", "fit", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--scheduler" in r.stdout


def test_train_on_lamost_fits_with_catalog(lamost_dir, lamost_catalog, tmp_path):
    out = tmp_path / "lamost.npz"
    assert main(["train", "--spectra", str(lamost_dir), "--labels", str(lamost_catalog),
                 "--label-names", "teff,logg,feh", "--out", str(out), "--C", "10", "--gamma", "0.1",
                 "--cv", "2", "--n-jobs", "2"]) == 0
    from slambayes import Emulator
    em = Emulator.load(out)
    assert em.X_train_.shape == (131, 3) and em.wave_.size == 1901


def test_sample_then_diagnose(demo_small, tmp_path, capsys):
    em, train = demo_small
    em.save(tmp_path / "m.npz")
    wave = em.wave_
    test = make_demo(3, snr=60.0, seed=5, wave=wave)
    test.to_npz(tmp_path / "stars.npz")
    nc = tmp_path / "star.nc"
    args = ["sample", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "stars.npz"),
            "--num-warmup", "200", "--num-samples", "200", "--num-chains", "2", "--out", str(nc)]
    assert main(args) == 2                                   # three stars, none chosen
    assert "--star" in capsys.readouterr().err
    assert main(args + ["--star", "1", "--prior", "parallax:parallax_mas=1.5,parallax_err_mas=0.1,mag=12"]) == 0
    assert "slambayes diagnose" in capsys.readouterr().out
    assert main(["diagnose", str(nc), "--out-dir", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "laplace_ok" in out and "mass" in out            # the nuisance mass is in the table
    for name in ("corner", "trace", "spectrum"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 10_000
    assert main(["sample", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "stars.npz"),
                 "--star", "0", "--prior", "parallax:parallax_mas=1.5", "--out", str(nc)]) == 2
    assert "parallax" in capsys.readouterr().err.lower()
    (tmp_path / "junk.nc").write_bytes(b"not netcdf")
    assert main(["diagnose", str(tmp_path / "junk.nc")]) == 2
    assert "junk.nc" in capsys.readouterr().err


def test_sample_takes_the_catalog_settings(demo_calibrated, tmp_path, capsys):
    """`sample --catalog` samples the density the catalog was fitted with (its MAPOPTS)."""
    import arviz as az

    from slambayes import MapOptions

    em, _ = demo_calibrated
    em.save(tmp_path / "m.npz")
    make_demo(2, snr=40.0, seed=8, wave=em.wave_).to_npz(tmp_path / "stars.npz")
    assert main(["fit", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "stars.npz"),
                 "--clip-sigma", "0", "--n-starts", "2", "--fit-rv", "--out", str(tmp_path / "c.fits")]) == 0
    from astropy.io import fits
    options = MapOptions.from_header(fits.getheader(tmp_path / "c.fits", 1))
    assert options.clip_sigma is None and options.n_starts == 2 and options.fit_rv
    nc = tmp_path / "s.nc"
    assert main(["sample", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "stars.npz"),
                 "--star", "0", "--catalog", str(tmp_path / "c.fits"), "--num-warmup", "100",
                 "--num-samples", "100", "--num-chains", "1", "--out", str(nc)]) == 0
    idata = az.from_netcdf(str(nc))
    assert MapOptions.from_json(idata.posterior.attrs["map_options"]) == options
    assert "rv_resid" in idata.posterior and idata.posterior.attrs["calibrated"] == 1
    assert main(["sample", "--model", str(tmp_path / "m.npz"), "--spectra", str(tmp_path / "stars.npz"),
                 "--star", "0", "--catalog", str(tmp_path / "stars.npz"), "--out", str(nc)]) == 2
    assert "--catalog" in capsys.readouterr().err


def test_version_flag():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "slambayes.cli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().startswith("slambayes ")


@pytest.mark.parametrize("argv, message", [
    (["train", "--demo", "50", "--out", "{tmp}/missing/m.npz"], "does not exist"),
    (["train", "--demo", "50", "--out", "{tmp}"], "is a directory"),
    (["train", "--demo", "50", "--out", "{tmp}/m.pkl"], "must end in .npz"),
    (["fit", "--model", "m.npz", "--spectra", "x.npz", "--out", "{tmp}/cat.txt"], "must end in"),
    (["fit", "--model", "m.npz", "--spectra", "x.npz", "--out", "{tmp}/no/cat.fits"], "does not exist"),
    (["sample", "--model", "m.npz", "--spectra", "x.npz", "--out", "{tmp}"], "is a directory"),
    (["demo", "--out", "{tmp}/file.txt"], "is a file"),
])
def test_outputs_are_checked_before_any_work(tmp_path, capsys, argv, message):
    (tmp_path / "file.txt").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.npz"))              # nothing was trained or written


@pytest.mark.parametrize("argv, message", [
    (["fit", "--model", "m", "--spectra", "s", "--out", "c.fits", "--n-starts", "0"], "--n-starts: must be ≥ 1"),
    (["fit", "--model", "m", "--spectra", "s", "--out", "c.fits", "--chunk-size", "-5"], "--chunk-size: must be ≥ 1"),
    (["fit", "--model", "m", "--spectra", "s", "--out", "c.fits", "--f-scale", "0"], "--f-scale: must be a positive"),
    (["sample", "--model", "m", "--spectra", "s", "--out", "p.nc", "--num-chains", "0"], "--num-chains: must be ≥ 1"),
    (["demo", "--n-test", "1"], "--n-test: must be ≥ 2"),
])
def test_bad_arguments_say_what_is_allowed(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_interrupt_is_a_clean_stop_with_a_resume_hint(monkeypatch, tmp_path, capsys):
    import slambayes.cli as cli

    def interrupted(a):
        raise KeyboardInterrupt
    real = cli.build_parser

    def parser_with_interrupting_fit():
        p = real()
        p._subparsers._group_actions[0].choices["fit"].set_defaults(func=interrupted)
        return p
    monkeypatch.setattr(cli, "build_parser", parser_with_interrupting_fit)
    assert cli.main(["fit", "--model", "m", "--spectra", "s", "--out", str(tmp_path / "c.fits")]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "run the same command again to resume" in err and "Traceback" not in err


def test_progress_bars_show_on_a_terminal_only():
    import io

    from slambayes.progress import bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    log, term = io.StringIO(), Terminal()
    assert list(bar(range(3), True, file=log)) == [0, 1, 2] and log.getvalue() == ""    # a log file: no bar
    list(bar(range(3), True, file=term))
    assert "3/3" in term.getvalue()
    quiet = Terminal()
    list(bar(range(3), False, file=quiet))
    assert quiet.getvalue() == ""


def test_cli_defaults_are_the_api_defaults():
    import inspect

    from slambayes import Emulator, fit_map, sample
    from slambayes.cli import build_parser

    p = build_parser()
    sub = p._subparsers._group_actions[0].choices
    checks = {"train": (Emulator, {"C": "C", "gamma": "gamma", "epsilon": "epsilon", "cv": "cv", "n_jobs": "n_jobs",
                                   "error_rank": "error_rank"}),
              "fit": (fit_map, {"n_starts": "n_starts", "chunk_size": "chunk_size", "n_jobs": "n_jobs", "loss": "loss",
                                "clip_sigma": "clip_sigma", "model_error": "model_error",
                                "calibration": "calibration", "rv_window": "rv_window",
                                "posterior_draws": "posterior_draws", "posterior_budget": "posterior_budget",
                                "engine": "engine"}),
              "sample": (sample, {"num_warmup": "num_warmup", "num_samples": "num_samples",
                                  "num_chains": "num_chains", "sampler": "sampler", "model_error": "model_error"})}
    from slambayes.map_core import MapOptions
    from slambayes.map_fit import UNSET
    for command, (func, names) in checks.items():
        params = inspect.signature(func).parameters
        for dest, api in names.items():
            default = params[api].default
            if default is UNSET or (command == "sample" and api in MapOptions.__dataclass_fields__):
                default = MapOptions.__dataclass_fields__[api].default      # a fit setting: MapOptions' default
            assert sub[command].get_default(dest) == default, (command, dest)


def test_single_label_gaussian_prior_from_the_command_line():
    from slambayes.cli import parse_prior

    p = parse_prior("gaussian:label_names=feh,mean=-0.5,sigma=0.1", None)
    assert p.label_names == ("feh",) and p.mean.tolist() == [-0.5] and np.allclose(p.cov, [[0.01]])
    q = parse_prior("gaussian:label_names=teff;logg,mean=5800;4.4,sigma=100;0.1", None)
    assert q.label_names == ("teff", "logg") and np.allclose(np.sqrt(np.diag(q.cov)), [100, 0.1])
