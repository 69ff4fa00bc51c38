"""Prior plug-ins for slambayes (imported as `slambayes.priors`).

Built-ins: `Uniform`, `Gaussian`, `TrainingDensity`, `Parallax`, `GalacticModel`. Third-party packages register more under the
entry-point group ``slambayes.priors``; `get(name, **kw)` finds both.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from .base import Prior, ProductPrior
from .galactic import GalacticModel
from .gaussian import Gaussian
from .parallax import Parallax
from .training_density import TrainingDensity
from .uniform import Uniform

__all__ = ["Prior", "ProductPrior", "Gaussian", "Uniform", "TrainingDensity", "Parallax",
           "GalacticModel", "get", "available", "register"]

BUILTIN = {"uniform": Uniform, "gaussian": Gaussian, "trainingdensity": TrainingDensity,
           "parallax": Parallax, "galacticmodel": GalacticModel}
GROUP = "slambayes.priors"
_REGISTERED = {}


def _key(name):
    return name.lower().replace("_", "")


def register(name, factory):
    """Make `get(name)` return `factory(**kw)` in this session (a notebook, a script).

    Packages register permanently through the entry-point group ``slambayes.priors``
    in their pyproject.toml:  [project.entry-points."slambayes.priors"] myprior = "pkg.mod:MyPrior"
    """
    if not callable(factory):
        raise TypeError(f"register({name!r}, ...) needs a class or function, got {factory!r}")
    _REGISTERED[_key(name)] = factory
    return factory


def available():
    """Names of the built-in and registered priors."""
    return sorted(set(BUILTIN) | set(_REGISTERED) | {ep.name for ep in entry_points(group=GROUP)})


def get(name, **kw):
    """Instantiate the prior called `name` (case/underscore-insensitive) with keyword arguments."""
    key = _key(name)
    for table in (BUILTIN, _REGISTERED):
        if key in table:
            return table[key](**kw)
    for ep in entry_points(group=GROUP):
        if _key(ep.name) == key:
            return ep.load()(**kw)
    raise KeyError(f"no prior called {name!r}; available: {available()}")
