"""Scale-out on a real dask.distributed cluster (a LocalCluster: scheduler and worker
processes): training and the survey MAP give what they give on local processes."""
import subprocess
import sys

import numpy as np
import pytest

from slambayes import Emulator, fit_map
from slambayes.datasets import make_demo


@pytest.fixture(scope="module")
def client():
    import distributed      # a dependency of slambayes: missing is a failure, not a skip
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


def test_training_and_map_on_a_local_cluster_match_local_processes(client, tmp_path):
    assert len(client.scheduler_info()["workers"]) == 2
    wave = np.linspace(4800.0, 5300.0, 121)
    train = make_demo(120, snr=80.0, seed=3, wave=wave)
    settings = dict(C=(3.0, 30.0), gamma=(0.1, 0.3), cv=3, block_size=16, progress=False)
    from distributed import get_task_stream

    local = Emulator(n_jobs=1, **settings).fit(train)
    with get_task_stream(client) as training:
        remote = Emulator(n_jobs=-1, backend="dask", **settings).fit(train)
    assert len({t["worker"] for t in training.data}) == 2        # the pixel blocks ran on both workers
    np.testing.assert_array_equal(remote.C_, local.C_)
    np.testing.assert_array_equal(remote.gamma_, local.gamma_)
    np.testing.assert_allclose(remote.dual_coef_, local.dual_coef_, rtol=0, atol=1e-12)
    np.testing.assert_allclose(remote.cv_mse_, local.cv_mse_, rtol=1e-12)

    test = make_demo(24, snr=40.0, seed=4, wave=wave)
    ours = fit_map(local, test, chunk_size=6, progress=False)
    with get_task_stream(client) as fitting:
        theirs = fit_map(local, test, chunk_size=6, client=client, output=tmp_path / "c.fits", progress=False)
    assert len(fitting.data) >= 4                                  # one task per chunk at least
    for name in ("teff", "logg", "feh", "teff_err", "rchi2", "flag"):
        np.testing.assert_allclose(np.asarray(theirs[name], float), np.asarray(ours[name], float),
                                   rtol=1e-9, atol=0)
    assert list(theirs["id"]) == list(ours["id"])


def test_the_cli_trains_on_the_cluster_of_a_scheduler_address(client, tmp_path):
    address = client.scheduler.address
    argv = ["train", "--demo", "40", "--cv", "0", "--C", "10", "--gamma", "0.1", "--no-calibrate"]
    for where, extra in (("local.npz", ()), ("cluster.npz", ("--scheduler", address))):
        done = subprocess.run([sys.executable, "-m", "slambayes.cli", "-q", *argv, "--out", str(tmp_path / where),
                               *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    local, remote = (Emulator.load(tmp_path / w) for w in ("local.npz", "cluster.npz"))
    lab = make_demo(5, seed=9).labels
    np.testing.assert_allclose(remote.predict(lab), local.predict(lab), rtol=0, atol=1e-12)
