"""`slambayes demo` from the installed console script, as a user runs it after install."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from astropy.table import Table


def test_demo_console_script_runs_the_whole_journey(tmp_path):
    exe = shutil.which("slambayes") or str(Path(sys.executable).parent / "slambayes")
    r = subprocess.run([exe, "demo", "--out", str(tmp_path / "demo"), "--n-jobs", "2"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for name in ("demo_model.npz", "demo_catalog.fits", "demo_labels.png", "demo_error_model.png",
                 "demo_star_posterior.nc", "demo_star_corner.png", "demo_star_spectrum.png"):
        assert (tmp_path / "demo" / name).exists() and name in out, name
    cat = Table.read(tmp_path / "demo" / "demo_catalog.fits")
    assert len(cat) == 300 and np.all((cat["flag"] & (1 | 8)) == 0)        # no "no data"/"error" rows
    assert np.mean(cat["flag"] == 0) > 0.9      # a few low-S/N fits may end at the grid edge
    # the printed scatter at S/N 80 (Teff/logg/[Fe/H]) is a usable precision
    s80 = re.search(r"S/N 80: ([\d.e+-]+)/([\d.e+-]+)/([\d.e+-]+)", out)
    assert s80 and float(s80.group(1)) < 150 and float(s80.group(2)) < 0.3 and float(s80.group(3)) < 0.1
    assert "R-hat" in out and "laplace_ok" in out
