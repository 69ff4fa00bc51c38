"""Progress bars that show on a terminal and stay out of non-interactive logs.

Every loop with a `progress` switch goes through `bar`: with progress=True the bar
appears only when its stream is a terminal (tqdm's `disable=None`), so batch jobs
and CI logs are not flooded with carriage-return updates; progress=False hides it.
"""
from __future__ import annotations

__all__ = ["bar"]


def bar(iterable, progress=True, **kw):
    """`tqdm.auto.tqdm(iterable, **kw)`, shown only if `progress` and the stream is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if progress else True, **kw)
