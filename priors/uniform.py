"""`Uniform`: a box prior (default: the emulator's training label range)."""
from __future__ import annotations

import numpy as np

from .base import Prior

__all__ = ["Uniform"]


class Uniform(Prior):
    """Flat density inside [low, high] per label, −inf outside.

    `Uniform.from_emulator(em)` uses the training label range.
    """

    def __init__(self, label_names, low, high):
        self.label_names = (label_names,) if isinstance(label_names, str) else tuple(label_names)
        self.low = np.atleast_1d(np.asarray(low, float))
        self.high = np.atleast_1d(np.asarray(high, float))
        if np.any(self.high <= self.low):
            raise ValueError("Uniform prior needs high > low for every label")
        self._log_norm = -float(np.sum(np.log(self.high - self.low)))

    def repr_params(self):
        return dict(label_names=list(self.label_names), low=self.low, high=self.high)

    @classmethod
    def from_emulator(cls, emulator, pad=0.0):
        """The support box of `slambayes.label_space.LabelSpace.from_emulator(emulator, pad)`."""
        from slambayes.label_space import LabelSpace

        space = LabelSpace.from_emulator(emulator, pad)
        return cls(space.names, space.low, space.high)

    def log_prob(self, values):
        import jax.numpy as jnp
        v = jnp.asarray(values)
        inside = jnp.all((v >= self.low) & (v <= self.high), axis=-1)
        return jnp.where(inside, self._log_norm, -jnp.inf)

    def support(self):
        return {n: (float(a), float(b)) for n, a, b in zip(self.label_names, self.low, self.high)}

    def sample(self, key, n):
        import jax
        return jax.random.uniform(key, (n, self.low.size), minval=self.low, maxval=self.high)
