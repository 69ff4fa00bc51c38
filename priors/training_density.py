"""`TrainingDensity`: a smooth density of the training labels (Gaussian mixture).

Keeps posteriors where the emulator was trained: an SVR emulator extrapolates
badly outside the cloud of training labels, and a box prior does not know
that the cloud is not a box (e.g. giants and dwarfs occupy separate regions of
the Teff–log g plane).
"""
from __future__ import annotations

import numpy as np

from .base import Prior

__all__ = ["TrainingDensity"]


class TrainingDensity(Prior):
    """Gaussian mixture (scikit-learn `GaussianMixture`) fitted to training labels.

    Parameters
    ----------
    labels : (n_star, k) training labels in physical units, or a fitted
        `Emulator` (its training labels are used)
    label_names : k names (taken from the emulator when one is given)
    n_components : mixture components (default 8)
    seed : random state of the mixture fit (the result is deterministic)

    The mixture is fitted in standardized units (each label scaled to mean 0,
    variance 1) with a small covariance floor (`reg_covar`), so the density
    is smooth rather than a set of spikes on the training stars.
    """

    def __init__(self, labels, label_names=None, n_components=8, reg_covar=1e-2, seed=0):
        from sklearn.mixture import GaussianMixture

        if hasattr(labels, "X_train_"):           # a fitted Emulator
            em = labels
            label_names = em.label_names_ if label_names is None else label_names
            labels = em.from_std(em.X_train_)
        labels = np.atleast_2d(np.asarray(labels, float))
        if label_names is None or len(label_names) != labels.shape[1]:
            raise ValueError(f"give {labels.shape[1]} label_names for labels of shape {labels.shape}")
        if not np.all(np.isfinite(labels)):
            raise ValueError("training labels contain NaN/inf; drop those stars first")
        self.label_names = tuple(label_names)
        self.loc, self.scale = labels.mean(0), labels.std(0)
        gm = GaussianMixture(n_components=min(n_components, len(labels)), covariance_type="full",
                             reg_covar=reg_covar, random_state=seed).fit((labels - self.loc) / self.scale)
        self.weights_, self.means_, self.covariances_ = gm.weights_, gm.means_, gm.covariances_
        self._chol = np.linalg.cholesky(self.covariances_)
        k = labels.shape[1]
        self._log_c = (np.log(self.weights_) - np.log(np.diagonal(self._chol, axis1=1, axis2=2)).sum(1)
                       - 0.5 * k * np.log(2 * np.pi) - np.log(self.scale).sum())

    def repr_params(self):
        return dict(label_names=list(self.label_names), n_components=len(self.weights_),
                    weights=self.weights_, loc=self.loc, scale=self.scale)

    def log_prob(self, values):
        import jax.numpy as jnp
        import jax.scipy.linalg as jsl
        from jax.scipy.special import logsumexp

        x = (jnp.asarray(values) - self.loc) / self.scale
        d = x[..., None, :] - self.means_                         # (..., m, k)
        z = jsl.solve_triangular(self._chol, d[..., None], lower=True)[..., 0]
        return logsumexp(self._log_c - 0.5 * jnp.sum(z * z, -1), axis=-1)

    def sample(self, key, n):
        import jax

        k1, k2 = jax.random.split(key)
        comp = jax.random.choice(k1, len(self.weights_), (n,), p=self.weights_)
        eps = jax.random.normal(k2, (n, len(self.label_names)))
        import jax.numpy as jnp
        x = jnp.asarray(self.means_)[comp] + (jnp.asarray(self._chol)[comp] @ eps[..., None])[..., 0]
        return self.loc + self.scale * x
