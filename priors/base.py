"""The prior interface: `log_prob(labels)` in jax.numpy, `label_names`, `a + b`."""
from __future__ import annotations

__all__ = ["Prior", "ProductPrior"]


class Prior:
    """Base class of the prior plug-ins.

    A prior names the labels it constrains (`label_names`) and returns
    `log_prob(values)` where `values` has shape (..., len(label_names)) in
    physical units, in the order of `label_names`; it broadcasts over leading
    axes and is differentiable with jax. `a + b` is the product prior.
    """

    label_names: tuple = ()
    #: nuisance parameters this prior needs besides the emulator's labels, as
    #: {name: (low, high)} in physical units; samplers sample them too
    nuisance: dict = {}

    def log_prob(self, values):
        raise NotImplementedError(f"{type(self).__name__} must define log_prob(values)")

    def support(self):
        """{name: (low, high)}: hard bounds this prior imposes (samplers respect them)."""
        return {}

    def gaussian_terms(self):
        """((names, mean, cov), ...) if the prior is Gaussian (usable as MAP
        residuals), else None."""
        return None

    def select(self, values, all_names):
        """Pick this prior's columns from `values` (..., len(all_names))."""
        missing = [n for n in self.label_names if n not in all_names]
        if missing:
            raise KeyError(f"prior {type(self).__name__} needs label(s) {missing}, "
                           f"which the emulator does not have (it has {list(all_names)})")
        idx = [list(all_names).index(n) for n in self.label_names]
        return values[..., idx]

    def log_prob_of(self, values, all_names):
        """log_prob of full label vectors ordered as `all_names`."""
        return self.log_prob(self.select(values, all_names))

    def __add__(self, other):
        return ProductPrior((self, other))

    def repr_params(self):
        """{name: value}: the parameters a reader needs to know which prior this is (its repr,
        stored with every posterior)."""
        return {"label_names": list(self.label_names)}

    def __repr__(self):
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.repr_params().items())
        return f"{type(self).__name__}({args})"


def _short(value):
    """A compact repr: arrays as lists of 6 significant digits."""
    import numpy as np

    if isinstance(value, (np.ndarray, list, tuple)) and not all(isinstance(v, str) for v in value):
        return repr(np.round(np.asarray(value, float), 6).tolist())
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return repr(value)


class ProductPrior(Prior):
    """The product of several priors (sum of their log densities)."""

    def __init__(self, parts):
        flat = []
        for p in parts:
            flat += list(p.parts) if isinstance(p, ProductPrior) else [p]
        self.parts = tuple(flat)
        names = []
        for p in self.parts:
            names += [n for n in p.label_names if n not in names]
        self.label_names = tuple(names)
        self.nuisance = {}
        for p in self.parts:
            self.nuisance.update(p.nuisance)

    def log_prob(self, values):
        return sum(p.log_prob_of(values, self.label_names) for p in self.parts)

    def support(self):
        out = {}
        for p in self.parts:
            for name, (lo, hi) in p.support().items():
                a, b = out.get(name, (-float("inf"), float("inf")))
                out[name] = (max(a, lo), min(b, hi))
        return out

    def __repr__(self):
        return " + ".join(repr(p) for p in self.parts)

    def gaussian_terms(self):
        terms = []
        for p in self.parts:
            t = p.gaussian_terms()
            if t is None:
                return None
            terms += list(t)
        return tuple(terms)
