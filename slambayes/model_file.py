"""The emulator model file: a pickle-free npz with a versioned schema.

Arrays are stored as plain npz members; everything else (schema, label names
and units, hyperparameter grid, training hash, package versions, creation
time) is one JSON document in the member `header`. `np.load(path,
allow_pickle=False)` reads every member.
"""
from __future__ import annotations

import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .label_space import DEFAULT_UNITS

__all__ = ["SCHEMA", "ModelFileError", "save_emulator", "load_emulator", "model_hash"]

SCHEMA = "slambayes.emulator/1"
ARRAYS = ("wave_", "label_mean_", "label_std_", "label_min_", "label_max_", "flux_mean_",
          "flux_std_", "X_train_", "dual_coef_", "intercept_", "C_", "gamma_", "cv_mse_",
          "cv_md_", "train_mse_", "noise_var_")
# optional members (newer files); a file without them loads with no correlated model error
OPTIONAL_ARRAYS = ("error_factor_", "fold_C_", "fold_gamma_")
PARAMS = ("C", "gamma", "epsilon", "cv", "random_state", "error_rank", "compression")


class ModelFileError(ValueError):
    """The file is not a readable slambayes model of this schema."""


def _versions():
    import importlib.metadata as md
    out = {}
    for pkg in ("slambayes", "numpy", "scipy", "scikit-learn", "jax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def model_hash(em):
    """sha256 of everything that determines a fitted emulator's predictions and errors: its
    arrays, hyperparameter grid, calibration and fit-check limits. Two models with the same
    hash give the same catalog; a resumed run compares it (`slambayes.map_fit`)."""
    import hashlib

    h = hashlib.sha256()
    arrays = {k: getattr(em, k) for k in ARRAYS + OPTIONAL_ARRAYS if hasattr(em, k)}
    for extra in ("calibration_", "checks_"):
        if getattr(em, extra, None) is not None:
            arrays.update(getattr(em, extra).to_arrays())
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k], dtype=np.float64).tobytes())
    # a dense evaluation (compression 0) hashes as files did before the setting existed
    params = {k: np.atleast_1d(getattr(em, k, 0.0)).tolist() for k in PARAMS
              if k != "error_rank" and (k != "compression" or getattr(em, k, 0.0))}
    h.update(json.dumps([list(em.label_names_), params]).encode())
    return h.hexdigest()


def save_emulator(em, path):
    """Write a fitted `Emulator` to `path` (npz)."""
    em._check_fitted()
    header = dict(
        schema=SCHEMA,
        label_names=em.label_names_,
        label_units=[DEFAULT_UNITS.get(n, "") for n in em.label_names_],
        wave_unit="Angstrom",
        params={k: (list(np.atleast_1d(getattr(em, k)).astype(float))
                    if k in ("C", "gamma") else getattr(em, k)) for k in PARAMS},
        training_hash=em.training_hash_,
        model_hash=model_hash(em),
        calibration=em.calibration_.stats if getattr(em, "calibration_", None) is not None else None,
        versions=_versions(),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {k: np.asarray(getattr(em, k)) for k in ARRAYS + OPTIONAL_ARRAYS if hasattr(em, k)}
    if getattr(em, "calibration_", None) is not None:
        arrays.update(em.calibration_.to_arrays())
    if getattr(em, "checks_", None) is not None:
        arrays.update(em.checks_.to_arrays())
    with open(tmp, "wb") as fh:
        np.savez(fh, header=np.array(json.dumps(header)), **arrays)
    tmp.replace(path)   # never leave a half-written model behind
    em.model_path_ = str(path)


def _check_shapes(path, a, k):
    """Refuse arrays whose shapes do not fit together (a file edited or written by other code)."""
    n_pix, n_train = a["wave_"].size, a["X_train_"].shape[0] if a["X_train_"].ndim == 2 else -1
    expect = {"X_train_": (n_train, k), "dual_coef_": (n_pix, n_train), "error_factor_": (n_pix, None),
              "fold_C_": (n_pix, None), "fold_gamma_": (n_pix, None)}
    expect.update({name: (k,) for name in ("label_mean_", "label_std_", "label_min_", "label_max_")})
    expect.update({name: (n_pix,) for name in ("flux_mean_", "flux_std_", "intercept_", "C_", "gamma_", "cv_mse_",
                                               "cv_md_", "train_mse_", "noise_var_")})
    for name, shape in expect.items():
        if name not in a:          # an optional array an older file lacks
            continue
        got = np.shape(a[name])
        if len(got) != len(shape) or any(e is not None and g != e for g, e in zip(got, shape)):
            want = "(" + ", ".join("m" if e is None else str(e) for e in shape) + ("," if len(shape) == 1 else "") + ")"
            raise ModelFileError(f"{path}: {name} has shape {got}, expected {want} for {n_pix} pixels, "
                                 f"{n_train} training stars and {k} labels; the file is damaged or not "
                                 f"written by slambayes")


def load_emulator(cls, path):
    """Read a model file written by `save_emulator` into a new `cls` instance."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "header" not in d.files:
                raise ModelFileError(f"{path}: not a slambayes model file (no header)")
            header = json.loads(str(d["header"]))
            if header.get("schema") != SCHEMA:
                raise ModelFileError(f"{path}: model schema {header.get('schema')!r} is not "
                                     f"supported by this slambayes (expects {SCHEMA!r}); "
                                     f"use the slambayes version that wrote it, or train the model again")
            missing = [k for k in ARRAYS if k not in d.files]
            if missing:
                raise ModelFileError(f"{path}: model file lacks {missing}")
            arrays = {k: d[k] for k in ARRAYS}
            n_pix = arrays["wave_"].size
            arrays["error_factor_"] = d["error_factor_"] if "error_factor_" in d.files else np.zeros((n_pix, 0))
            for k in ("fold_C_", "fold_gamma_"):       # older files: the calibration uses C_, gamma_
                if k in d.files:
                    arrays[k] = d[k]
            calib = (d["calib_params_"], d["calib_rho_"], d["calib_X_ref_"]) if "calib_params_" in d.files else None
            calib_R = d["calib_R_"] if "calib_R_" in d.files else None
            checks = d["checks_limits_"] if "checks_limits_" in d.files else None
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError) as exc:
        raise ModelFileError(f"{path}: corrupted or truncated model file ({exc})") from exc
    _check_shapes(path, arrays, len(header["label_names"]))
    p = header["params"]
    em = cls(C=tuple(p["C"]), gamma=tuple(p["gamma"]), epsilon=p["epsilon"], cv=p["cv"],
             random_state=p["random_state"], error_rank=p.get("error_rank", 0),
             compression=p.get("compression", 0.0))   # older files: the exact expansion they were made with
    for k, v in arrays.items():
        setattr(em, k, v)
    em.label_names_ = list(header["label_names"])
    em.label_units_ = list(header["label_units"])
    em.training_hash_ = header["training_hash"]
    em.file_header_ = header
    em.calibration_ = em.checks_ = None
    if calib is not None:
        from .calibration import Calibration
        em.calibration_ = Calibration.from_arrays(*calib, stats=header.get("calibration") or {}, R=calib_R)
    if checks is not None:
        from .fit_checks import FitChecks
        em.checks_ = FitChecks.from_arrays(checks, em.X_train_)
    em.model_path_ = str(path)
    em._expansion = None
    return em
