#!/usr/bin/env bash
# Create the peers' venv (git-ignored): astroslam and The Cannon as users get them
# from PyPI, on the versions they need. Our runner (bench/peers/run_peer.py) applies the
# compatibility shims at import time; no peer code is copied into this repository.
#   bench/peers/setup.sh            # → bench/.venv-peers
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${PEERS_VENV:-$HERE/../.venv-peers}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# astroslam pins scikit-learn 1.2.0; numpy 1.23 still has the np.int/np.float aliases it uses
"$VENV/bin/python" -m pip install --quiet "numpy==1.23.5" "scipy>=1.9,<1.12" "scikit-learn==1.2.0" \
    "astropy>=5,<6" "matplotlib>=3.5,<3.9" "joblib>=1.1" "emcee>=3" "ipyparallel>=8" \
    astroslam thecannon
"$VENV/bin/python" - <<'PY'
import collections, collections.abc
for name in ("Set", "Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
    setattr(collections, name, getattr(collections.abc, name))
import slam, TheCannon, sklearn, numpy
print("peers ready: astroslam", getattr(slam, "__version__", "?"), "| TheCannon", getattr(TheCannon, "__version__", "?"),
      "| scikit-learn", sklearn.__version__, "| numpy", numpy.__version__)
PY
echo "peers venv: $VENV"
