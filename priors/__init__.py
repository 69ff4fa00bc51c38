"""Prior plug-ins for slambayes (imported as `slambayes.priors`).

Built-ins: `Uniform`, `Gaussian`. Third-party packages register more under the
entry-point group ``slambayes.priors``; `get(name, **kw)` finds both.
"""
from __future__ import annotations

from importlib.metadata import entry_points

from .base import Prior, ProductPrior
from .gaussian import Gaussian
from .uniform import Uniform

__all__ = ["Prior", "ProductPrior", "Gaussian", "Uniform", "get", "available"]

BUILTIN = {"uniform": Uniform, "gaussian": Gaussian}
GROUP = "slambayes.priors"


def available():
    """Names of the built-in and registered priors."""
    return sorted(set(BUILTIN) | {ep.name for ep in entry_points(group=GROUP)})


def get(name, **kw):
    """Instantiate the prior called `name` (case-insensitive) with keyword arguments."""
    key = name.lower()
    if key in BUILTIN:
        return BUILTIN[key](**kw)
    for ep in entry_points(group=GROUP):
        if ep.name.lower() == key:
            return ep.load()(**kw)
    raise KeyError(f"no prior called {name!r}; available: {available()}")
