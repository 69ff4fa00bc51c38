"""The trained SVR emulator as a kernel expansion, evaluated without scikit-learn.

For pixel j with RBF width γ_j, dual coefficients A_j (n_train,), intercept b_j
and training labels X (n_train, k), all in standardized units:

    f_j(θ) = b_j + Σ_i A_ji exp(−γ_j ‖X_i − θ‖²)
    ∂f_j/∂θ = Σ_i A_ji 2γ_j (X_i − θ) exp(−γ_j ‖X_i − θ‖²)
    ∂²f_j/∂θ² = Σ_i A_ji exp(−γ_j ‖X_i − θ‖²) (4γ_j² (θ − X_i)(θ − X_i)ᵀ − 2γ_j I)

Pixels sharing one γ form a group and are evaluated with one matrix product.
The functions take the array module `xp` (numpy or jax.numpy) so that one
definition serves the LM fit (numpy) and the samplers (jax).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KernelExpansion"]


@dataclass(frozen=True)
class KernelExpansion:
    """Dense per-pixel RBF expansions in standardized space.

    Attributes
    ----------
    X : (n_train, k) standardized training labels
    gammas : tuple of distinct γ values
    A_T : tuple of (n_train, n_pix_g) arrays, the dual coefficients of each group, transposed
    b : tuple of (n_pix_g,) intercepts of each group
    order : (n_pix,) int, position of each pixel in the concatenated group outputs
    """

    X: np.ndarray
    gammas: tuple
    A_T: tuple
    b: tuple
    order: np.ndarray

    @classmethod
    def from_dense(cls, X, dual_coef, intercept, gamma):
        """Group pixels by γ. dual_coef (n_pix, n_train), intercept, gamma (n_pix,)."""
        X = np.ascontiguousarray(X, float)
        gamma = np.asarray(gamma, float)
        gammas = tuple(np.unique(gamma).tolist())
        idx = [np.flatnonzero(gamma == g) for g in gammas]
        perm = np.concatenate(idx)
        order = np.empty_like(perm)
        order[perm] = np.arange(perm.size)
        A_T = tuple(np.ascontiguousarray(dual_coef[i].T) for i in idx)
        b = tuple(np.asarray(intercept, float)[i] for i in idx)
        return cls(X, gammas, A_T, b, order)

    def to_xp(self, xp):
        """The same expansion with arrays of module `xp` (e.g. jax.numpy)."""
        return KernelExpansion(xp.asarray(self.X), self.gammas, tuple(xp.asarray(a) for a in self.A_T),
                               tuple(xp.asarray(v) for v in self.b), xp.asarray(self.order))

    def _sqdist(self, xp, theta):
        X = self.X
        d = theta[..., None, :] - X                      # (m, n_train, k)
        return xp.sum(d * d, axis=-1), d

    def predict(self, theta, xp=np):
        """f(θ) for θ (m, k) standardized → (m, n_pix) standardized flux."""
        d2, _ = self._sqdist(xp, theta)
        outs = [xp.exp(-g * d2) @ A + b for g, A, b in zip(self.gammas, self.A_T, self.b)]
        return xp.concatenate(outs, axis=-1)[..., self.order]

    def predict_and_jacobian(self, theta, xp=np):
        """(f, J) for θ (m, k): f (m, n_pix), J (m, n_pix, k), standardized units."""
        d2, d = self._sqdist(xp, theta)                  # d = θ − X
        k = theta.shape[-1]
        fs, js = [], []
        for g, A, b in zip(self.gammas, self.A_T, self.b):
            K = xp.exp(-g * d2)                          # (m, n_train)
            # one product for f and all k derivative columns
            W = xp.concatenate([K[..., None, :], (-2.0 * g) * (d * K[..., None]).swapaxes(-1, -2)],
                               axis=-2)                  # (m, 1 + k, n_train)
            out = W @ A                                  # (m, 1 + k, n_pix_g)
            fs.append(out[..., 0, :] + b)
            js.append(out[..., 1:, :])
        f = xp.concatenate(fs, axis=-1)[..., self.order]
        J = xp.concatenate(js, axis=-1)[..., self.order].swapaxes(-1, -2)
        return f, J.reshape(f.shape + (k,))

    def weighted_hessian(self, theta, w):
        """Σ_j w_j ∂²f_j/∂θ² (k, k) at one θ (k,) for pixel weights w (n_pix,), numpy: the
        curvature term of a least-squares Hessian, at the cost of one evaluation of f."""
        theta, w = np.asarray(theta, float), np.asarray(w, float)
        w_cat = np.empty_like(w)
        w_cat[self.order] = w                            # pixels in group order
        d = theta[None, :] - self.X                      # (n_train, k)
        d2 = np.sum(d * d, axis=1)
        H = np.zeros((theta.size, theta.size))
        start = 0
        for g, A in zip(self.gammas, self.A_T):
            n_g = A.shape[1]
            c = np.exp(-g * d2) * (A @ w_cat[start:start + n_g])          # (n_train,)
            H += 4.0 * g * g * (d.T * c) @ d - 2.0 * g * c.sum() * np.eye(theta.size)
            start += n_g
        return H
