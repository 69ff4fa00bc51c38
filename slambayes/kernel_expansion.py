"""The trained SVR emulator as a kernel expansion, evaluated without scikit-learn.

For pixel j with RBF width γ_j, dual coefficients A_j (n_train,), intercept b_j
and training labels X (n_train, k), all in standardized units:

    f_j(θ) = b_j + Σ_i A_ji exp(−γ_j ‖X_i − θ‖²)
    ∂f_j/∂θ = Σ_i A_ji 2γ_j (X_i − θ) exp(−γ_j ‖X_i − θ‖²)
    ∂²f_j/∂θ² = Σ_i A_ji exp(−γ_j ‖X_i − θ‖²) (4γ_j² (θ − X_i)(θ − X_i)ᵀ − 2γ_j I)

Pixels sharing one γ form a group and are evaluated with one matrix product.
A group's coefficients may be stored in low rank, A ≈ U V with U = A Q (n_train, r) and
V = Qᵀ (r, n_pix_g) (`KernelExpansion.compressed`): the pixels of a spectrum are highly
redundant, so r ≪ n_pix_g and every product costs r (n_train + n_pix_g) instead of
n_train·n_pix_g. The functions take the array module `xp` (numpy or jax.numpy) so that one
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
        (of a compressed group: U, (n_train, r))
    b : tuple of (n_pix_g,) intercepts of each group
    order : (n_pix,) int, position of each pixel in the concatenated group outputs
    V : () for a dense expansion, else per group None (dense) or the (r, n_pix_g) factor V
    """

    X: np.ndarray
    gammas: tuple
    A_T: tuple
    b: tuple
    order: np.ndarray
    V: tuple = ()

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

    def compressed(self, max_error, scale):
        """A low-rank copy whose predictions at the training labels differ from this one's by
        at most `max_error`·scale_j RMS for every pixel j (scale (n_pix,) standardized, e.g.
        the CV RMS error). Per group, Q holds the leading right singular vectors of the
        training-point predictions K A (n_train, n_pix_g), the smallest number that meets the
        bound; groups where the factors would not be cheaper stay dense."""
        if self.V:
            raise ValueError("this expansion is compressed already")
        s_cat = np.empty(self.order.size)
        s_cat[self.order] = np.asarray(scale, float)
        n_train = self.X.shape[0]
        d2 = np.sum((self.X[:, None, :] - self.X[None, :, :]) ** 2, axis=-1)
        U_all, V_all, start = [], [], 0
        for g, A in zip(self.gammas, self.A_T):
            n_g = A.shape[1]
            limit = (max_error * s_cat[start:start + n_g]) ** 2 * n_train
            start += n_g
            _, sv, Vt = np.linalg.svd(np.exp(-g * d2) @ A, full_matrices=False)
            # tail[r, j]: squared change of pixel j's predictions summed over the training labels
            # when only the first r singular vectors are kept
            P = (sv[:, None] * Vt) ** 2
            tail = np.concatenate([np.cumsum(P[::-1], axis=0)[::-1], np.zeros((1, n_g))])
            r = int(np.argmax(np.all(tail <= limit, axis=1)))   # the last row always passes
            if r * (n_train + n_g) < n_train * n_g:
                Q = Vt[:r].T
                U_all.append(np.ascontiguousarray(A @ Q))
                V_all.append(np.ascontiguousarray(Q.T))
            else:
                U_all.append(A)
                V_all.append(None)
        return KernelExpansion(self.X, self.gammas, tuple(U_all), self.b, self.order, tuple(V_all))

    @property
    def ranks(self):
        """Per group, the rank of its coefficients as stored (n_pix_g where dense)."""
        return tuple(A.shape[1] for A in self.A_T)

    def _factor(self, i):
        """Group i's low-rank factor V (r, n_pix_g), or None where it is stored dense."""
        return self.V[i] if self.V else None

    def _projected_as_kernel(self, i):
        """True where group i is best projected through its kernel row itself (u = K(θ),
        basis A): a dense group with fewer training stars than pixels."""
        return self._factor(i) is None and self.X.shape[0] < self.b[i].shape[0]

    def coefficients(self, theta, xp=np):
        """u(θ) (m, R) for θ (m, k) such that predict(θ) = u(θ) @ basis() + intercept(), exactly:
        per group the kernel row times its low-rank factor U (compressed), the kernel row
        itself (dense, n_train < n_pix_g) or the group's outputs (dense otherwise), so
        R = Σ_g min(rank_g, n_train, n_pix_g)."""
        d2 = self._sqdist_by_product(xp, theta)
        return xp.concatenate([xp.exp(-g * d2) if self._projected_as_kernel(i) else xp.exp(-g * d2) @ A
                               for i, (g, A) in enumerate(zip(self.gammas, self.A_T))], axis=-1)

    def basis(self):
        """(R, n_pix) numpy, the rows `coefficients` multiply: per group its V (compressed), its
        coefficients A (n_train, n_pix_g) or the identity, in its pixels' columns."""
        blocks = []
        for i, (A, b) in enumerate(zip(self.A_T, self.b)):
            if self._factor(i) is not None:
                blocks.append(self._factor(i))
            else:
                blocks.append(A if self._projected_as_kernel(i) else np.eye(b.shape[0]))
        B = np.zeros((sum(x.shape[0] for x in blocks), self.order.size))
        r0 = c0 = 0
        for x in blocks:
            B[r0:r0 + x.shape[0], c0:c0 + x.shape[1]] = x
            r0, c0 = r0 + x.shape[0], c0 + x.shape[1]
        return B[:, self.order]

    @property
    def projection_rank(self):
        """R, the length of `coefficients`."""
        return sum(A.shape[1] if self._factor(i) is not None else min(A.shape[1], self.X.shape[0])
                   for i, A in enumerate(self.A_T))

    def intercept(self):
        """(n_pix,) numpy intercepts in pixel order."""
        return np.concatenate(self.b)[self.order]

    def _in_pixel_order(self, outs, xp):
        """The groups' outputs (..., n_pix_g) as one array (..., n_pix) in pixel order (one
        group: already so, no copy)."""
        return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=-1)[..., self.order]

    def _times(self, i, W):
        """W @ (group i's coefficients) for W (..., n_train)."""
        # one matrix product over all leading dimensions: a stacked (m, 1 + k, n_train) operand
        # is multiplied matrix by matrix, each pass streaming the whole coefficient array
        # through memory (3× slower on 64 stars of a 7214-px model)
        lead = W.shape[:-1]
        out = W.reshape(-1, W.shape[-1]) @ self.A_T[i]
        if self._factor(i) is not None:
            out = out @ self._factor(i)
        return out.reshape(lead + out.shape[-1:])

    def astype(self, dtype):
        """The same expansion with its arrays in `dtype` (float32 halves the cost of a product;
        evaluate it at θ of the same dtype)."""
        def cast(a):
            return None if a is None else np.ascontiguousarray(a, dtype)
        return KernelExpansion(cast(self.X), self.gammas, tuple(cast(a) for a in self.A_T),
                               tuple(cast(v) for v in self.b), self.order, tuple(cast(v) for v in self.V))

    def to_xp(self, xp):
        """The same expansion with arrays of module `xp` (e.g. jax.numpy)."""
        return KernelExpansion(xp.asarray(self.X), self.gammas, tuple(xp.asarray(a) for a in self.A_T),
                               tuple(xp.asarray(v) for v in self.b), xp.asarray(self.order),
                               tuple(None if v is None else xp.asarray(v) for v in self.V))

    def _sqdist_by_product(self, xp, theta):
        """‖θ − X_i‖² (m, n_train) as ‖θ‖² + ‖X‖² − 2θ·X (as libsvm computes it): a matrix product."""
        return xp.maximum(xp.sum(theta * theta, axis=-1)[..., None] + xp.sum(self.X * self.X, axis=-1)
                          - 2.0 * theta @ self.X.T, 0.0)

    def predict(self, theta, xp=np):
        """f(θ) for θ (m, k) standardized → (m, n_pix) standardized flux."""
        d2 = self._sqdist_by_product(xp, theta)
        outs = [self._times(i, xp.exp(-g * d2)) + b for i, (g, b) in enumerate(zip(self.gammas, self.b))]
        return self._in_pixel_order(outs, xp)

    def predict_and_jacobian(self, theta, xp=np):
        """(f, J) for θ (m, k): f (m, n_pix), J (m, n_pix, k), standardized units."""
        d2 = self._sqdist_by_product(xp, theta)
        k = theta.shape[-1]
        diff = theta[..., :, None] - self.X.T            # (m, k, n_train): θ − X, laid out as W needs it
        fs, js = [], []
        for i, (g, b) in enumerate(zip(self.gammas, self.b)):
            K = xp.exp(-g * d2)                          # (m, n_train)
            # one product for f and all k derivative columns
            W = xp.concatenate([K[..., None, :], (-2.0 * g) * diff * K[..., None, :]], axis=-2)   # (m, 1 + k, n_train)
            out = self._times(i, W)                      # (m, 1 + k, n_pix_g)
            fs.append(out[..., 0, :] + b)
            js.append(out[..., 1:, :])
        f = self._in_pixel_order(fs, xp)
        J = self._in_pixel_order(js, xp).swapaxes(-1, -2)
        return f, J.reshape(f.shape + (k,))

    def weighted_hessian(self, theta, w):
        """Σ_j w_j ∂²f_j/∂θ² (k, k) at θ (k,) for pixel weights w (n_pix,), or (m, k, k) for θ (m, k)
        and w (m, n_pix), numpy: the curvature term of a least-squares Hessian, at the cost of
        one evaluation of f (all m stars in one matrix product)."""
        theta, w = np.asarray(theta, float), np.asarray(w, float)
        one = theta.ndim == 1
        theta, w = np.atleast_2d(theta), np.atleast_2d(w)
        m, k = theta.shape
        w_cat = np.empty_like(w)
        w_cat[:, self.order] = w                          # pixels in group order
        d = theta[:, None, :] - self.X                    # (m, n_train, k)
        d2 = np.sum(d * d, axis=-1)
        H = np.zeros((m, k, k))
        start = 0
        for i, (g, b) in enumerate(zip(self.gammas, self.b)):
            n_g = b.shape[0]
            w_g = w_cat[:, start:start + n_g]
            if self._factor(i) is not None:
                w_g = w_g @ self._factor(i).T
            c = np.exp(-g * d2) * (w_g @ self.A_T[i].T)                   # (m, n_train)
            H += 4.0 * g * g * np.einsum("mnj,mn,mnl->mjl", d, c, d) - 2.0 * g * c.sum(1)[:, None, None] * np.eye(k)
            start += n_g
        return H[0] if one else H
