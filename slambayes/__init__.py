"""slambayes: stellar labels from spectra with the SLAM emulator and honest uncertainties.

Data flow: io → preprocess → emulator → likelihood → map_fit / sampling →
diagnostics → catalog. See README.md and the project's DESIGN document.
"""
from . import preprocess
from .apogee import read_apogee
from .emulator import Emulator
from .io import join_labels, read_label_catalog, read_lamost
from .map_core import MapOptions
from .map_fit import fit_map
from .out_of_fold import calibrate
from .posterior import Posterior, fit_map_posterior
from .sampling import sample
from .spectra import Spectra, SpectraWarning

__all__ = ["Spectra", "SpectraWarning", "read_lamost", "read_apogee", "read_label_catalog", "join_labels",
           "preprocess", "Emulator", "calibrate", "fit_map", "MapOptions", "fit_map_posterior", "Posterior", "sample"]
__version__ = "0.1.0"
