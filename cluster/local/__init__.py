"""A multi-host test cluster on one machine: Linux network namespaces as hosts, a Ray head and workers with
token authentication, an S3 store (SeaweedFS) and a client host, all on a private bridge.

``python -m cluster.local up --hosts 3`` / ``down``; ``LocalCluster`` from Python (the tests' fixture in
``tests/helpers/local_cluster.py``). Needs root and ``ip netns``. See cluster/README.md, "Try it on one
machine".
"""

from cluster.local.cluster import ClusterError, Host, LocalCluster, leftovers

__all__ = ["ClusterError", "Host", "LocalCluster", "leftovers"]
