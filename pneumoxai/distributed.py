"""One analysis over the workers of a Dask cluster (``pip install pneumoxai[distributed]``).

``pneumoxai analyse --run R --workers N`` (a local cluster of N single-threaded worker
processes) or ``--scheduler ADDRESS`` (any running Dask scheduler: ``dask scheduler`` /
``dask worker``, dask-jobqueue's ``SLURMCluster`` / ``PBSCluster``, dask-kubernetes) runs
the rounds of :mod:`pneumoxai.pipeline.sharding` as Dask tasks, one shard per worker, and
merges each round in this process: the same files as ``--shard I/N`` jobs and
``pneumoxai merge``, and the same results as a single-process ``analyse``. Workers read the
run folder and the images from a file system they share with this process and load each
member once (a worker that runs several shards keeps the models).

Dask rather than Ray: ``dask[distributed]`` is a 5 MB download that installs in seconds and
starts a two-worker local cluster in about 3 s on two cores, where Ray is an 80 MB wheel
(285 MB installed) that takes about 8 s to start; both are permissively licensed (BSD-3,
Apache-2.0); and Dask reaches the schedulers audit sites run (Slurm, PBS, SGE, LSF through
dask-jobqueue; Kubernetes) by a scheduler address, with nothing to install on the cluster
but this package.
"""

import contextlib

from .errors import ConfigError
from .validation import Interval, check_param

__all__ = ["analyse_on_cluster", "cluster_client"]


def _shard_task(root, config, index, count):
    """One shard, run in a worker process (a module-level function, so Dask sends it by name)."""
    from .pipeline.sharding import analyse_shard
    from .run_folder import RunFolder

    return analyse_shard(RunFolder(root), config, shard=(index, count))


def analyse_on_cluster(run, config, client, *, n_shards=None, skip=(), verbose="auto"):
    """``analyse`` with its per-image work spread over the workers of ``client``.

    Each round (the members' predictions, then, when the explain stage runs, the
    test-split maps) is ``n_shards`` tasks of
    :func:`~pneumoxai.pipeline.analyse_shard`; this process merges each round with
    :func:`~pneumoxai.pipeline.merge_shards` and runs the remaining stages.

    Parameters
    ----------
    run : RunFolder
        On a file system the workers share (they read its members and write their parts).
    config : dict
        The run's config.
    client : distributed.Client
    n_shards : int, default=None
        Tasks per round; default one per worker of the cluster.
    skip : set of str, default=()
        Stages to leave out, as ``analyse --skip``.
    verbose : {"auto", 0}, default="auto"

    Returns
    -------
    int
        The number of rounds of shards that ran (0 when nothing per-image was pending).

    Examples
    --------
    >>> from pneumoxai.distributed import analyse_on_cluster, cluster_client
    >>> with cluster_client(workers=2) as client:  # doctest: +SKIP
    ...     analyse_on_cluster(RunFolder("runs/site"), config, client)
    """
    from .pipeline.sharding import merge_shards, pending_step

    n_shards = len(client.scheduler_info()["workers"]) if n_shards is None else n_shards
    check_param("analyse_on_cluster", "n_shards", n_shards, Interval("int", 1, None))
    root, rounds = str(run.root.resolve()), 0
    while True:
        if pending_step(run, config) is not None:
            count = range(1, n_shards + 1)
            client.gather(client.map(_shard_task, [root] * n_shards, [config] * n_shards, count,
                                     [n_shards] * n_shards, pure=False))
            rounds += 1
        if merge_shards(run, config, skip=skip, verbose=verbose) is None:
            return rounds


@contextlib.contextmanager
def cluster_client(*, workers=None, scheduler=None):
    """A Dask client of a local cluster of ``workers`` processes, or of the scheduler at ``scheduler``.

    Local workers are single-threaded processes (TensorFlow uses the cores within each);
    the cluster is closed when the block ends.

    Raises
    ------
    ConfigError
        Dask is not installed, or not exactly one of ``workers`` and ``scheduler`` is given.
    """
    if (workers is None) == (scheduler is None):
        raise ConfigError("cluster_client takes one of workers (a local cluster) and scheduler (an address).")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("Running on a Dask cluster needs the distributed extra: pip install "
                          "'pneumoxai[distributed]' (or use --shard I/N jobs and `pneumoxai merge`).") from None
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    import logging

    check_param("cluster_client", "workers", workers, Interval("int", 1, None))
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client
