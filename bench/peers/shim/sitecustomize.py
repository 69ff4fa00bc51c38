"""Compatibility shims for the peers, applied at interpreter start-up.

run_peer.py puts this folder on PYTHONPATH, so the shims also reach joblib/loky
worker processes, which import `slam` afresh when they unpickle a task.
astroslam imports collections.Set/Mapping/…, moved to collections.abc in Python 3.10.
"""
import collections
import collections.abc

for _name in ("Set", "Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
    if not hasattr(collections, _name):
        setattr(collections, _name, getattr(collections.abc, _name))
