"""`Gaussian`: independent or correlated normal prior on some labels."""
from __future__ import annotations

import numpy as np

from .base import Prior

__all__ = ["Gaussian"]


class Gaussian(Prior):
    """N(mean, cov) on `label_names` (physical units).

    Parameters
    ----------
    label_names : sequence of str
    mean : (k,) ; sigma : (k,) for independent labels, or cov : (k, k)
    """

    def __init__(self, label_names, mean, sigma=None, cov=None):
        self.label_names = (label_names,) if isinstance(label_names, str) else tuple(label_names)
        self.mean = np.atleast_1d(np.asarray(mean, float))
        if (sigma is None) == (cov is None):
            raise ValueError("give exactly one of sigma or cov")
        if sigma is not None:
            sigma = np.atleast_1d(np.asarray(sigma, float))
            if not np.all(np.isfinite(sigma) & (sigma > 0)):
                raise ValueError(f"Gaussian prior on {list(self.label_names)}: sigma must be positive and finite, "
                                 f"got {sigma.tolist()}")
        cov = np.diag(sigma**2) if cov is None else np.atleast_2d(cov)
        k = len(self.label_names)
        if self.mean.shape != (k,) or cov.shape != (k, k):
            raise ValueError(f"Gaussian prior on {list(self.label_names)}: mean {self.mean.shape} / cov "
                             f"{cov.shape} do not match its {k} label(s); give one mean and one sigma per label")
        self.cov = np.asarray(cov, float)
        self._L = np.linalg.cholesky(self.cov)     # raises if cov is not positive definite
        self._logdet = 2 * np.sum(np.log(np.diag(self._L)))

    def repr_params(self):
        diag = np.allclose(self.cov, np.diag(np.diag(self.cov)))
        return dict(label_names=list(self.label_names), mean=self.mean,
                    **({"sigma": np.sqrt(np.diag(self.cov))} if diag else {"cov": self.cov}))

    def log_prob(self, values):
        import jax.numpy as jnp
        import jax.scipy.linalg as jsl

        d = jnp.asarray(values) - self.mean
        z = jsl.solve_triangular(jnp.asarray(self._L), d[..., None], lower=True)[..., 0]
        k = len(self.label_names)
        return -0.5 * jnp.sum(z * z, axis=-1) - 0.5 * (self._logdet + k * np.log(2 * np.pi))

    def gaussian_terms(self):
        return ((list(self.label_names), self.mean, self.cov),)

    def sample(self, key, n):
        import jax
        return jax.random.multivariate_normal(key, self.mean, self.cov, (n,))
