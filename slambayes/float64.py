"""jax in float64, scoped to slambayes' own calls.

The emulator's kernel sums and the Woodbury-whitened likelihood lose several
digits in float32 (the χ² of one star agrees with numpy to 1e-10 only in float64),
so every jax computation of slambayes runs with `jax_enable_x64` on. It is
switched on for the duration of each public call (`in_float64`), not for the
whole session: a user's own jax code keeps its own setting. Code that calls
`Posterior.model` or `Posterior.log_prob_std` from its own numpyro/jax program
should run inside ``with slambayes.float64.enabled():`` too.
"""
from __future__ import annotations

import functools

__all__ = ["enabled", "in_float64"]


def enabled():
    """A context manager that turns `jax_enable_x64` on inside it (and back after)."""
    import jax

    if hasattr(jax, "enable_x64"):                  # jax ≥ 0.6
        return jax.enable_x64(True)
    from jax.experimental import enable_x64         # older jax
    return enable_x64(True)


def in_float64(func):
    """Decorator: run `func` with jax in float64 (see `enabled`)."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with enabled():
            return func(*args, **kwargs)
    return wrapper
