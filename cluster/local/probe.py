"""Checks run *inside* a namespace of a local cluster (``python -m cluster.local.probe CMD ...``).

The caller (the test, or ``python -m cluster.local``) stays in the machine's root namespace, which has
no route to the cluster's private addresses, and runs these through ``ip netns exec`` on the client
host. Each command prints one JSON line last; a failure exits non-zero with one line on stderr.

Commands:
  mkbucket [--timeout S]                   wait for the S3 store, create the bucket ``mvrec``
  wait-nodes URL N [--timeout S]           wait until the head at URL reports N alive nodes
  http-status URL [--token] [--post JSON]  HTTP status and body of a GET or POST (with or without the Ray token)
  job-tasks URL SUBMISSION_ID              the job's tasks grouped by the address of the node that ran them
  read URI                                 an object of the store, as text
  copy SRC DST                             copy a directory of the store (a checkpoint) to another prefix
  ls URI                                   the entries under a directory of the store (recursive)
  train-windows DATASET                    every (sample, window) of the dataset's train split, sorted
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse


def _fail(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(1)


def mkbucket(timeout: float) -> dict:
    """Create the bucket once the store answers (its S3 gateway comes up after master, volume and filer)."""
    import pyarrow.fs as pafs

    from cluster.local.store import BUCKET

    endpoint = urlparse(os.environ["AWS_ENDPOINT_URL"])
    fs = pafs.S3FileSystem(endpoint_override=endpoint.netloc, scheme=endpoint.scheme, allow_bucket_creation=True,
                           connect_timeout=2, request_timeout=5)
    start, last = time.monotonic(), ""
    while time.monotonic() - start < timeout:
        try:
            fs.create_dir(BUCKET)
            if fs.get_file_info(BUCKET).type == pafs.FileType.Directory:
                return {"bucket": BUCKET, "seconds": round(time.monotonic() - start, 1)}
        except OSError as exc:
            last = str(exc).splitlines()[0]
        time.sleep(0.5)
    _fail(f"the S3 store at {endpoint.netloc} did not accept a bucket within {timeout:.0f} s (last error: {last})")


def wait_nodes(url: str, count: int, timeout: float) -> list[dict]:
    """Wait until ``count`` nodes are alive; return them (id, address, CPUs)."""
    from ray.util.state import list_nodes

    start, last = time.monotonic(), "no answer"
    while time.monotonic() - start < timeout:
        try:
            nodes = [n for n in list_nodes(address=url, raise_on_missing_output=False) if n.state == "ALIVE"]
            last = f"{len(nodes)} alive: {sorted(n.node_ip for n in nodes)}"
            if len(nodes) >= count:
                return [{"node_id": n.node_id, "ip": n.node_ip, "head": n.is_head_node,
                         "cpus": n.resources_total.get("CPU", 0)} for n in nodes]
        except Exception as exc:  # the dashboard answers 5xx / refuses while it starts
            last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        time.sleep(1)
    _fail(f"{url}: expected {count} alive nodes within {timeout:.0f} s; last seen {last}")


def http_status(url: str, token: bool, post: str | None = None) -> dict:
    """Status and body of ``GET url`` (``POST`` of the JSON ``post``), with the Ray token when ``token``."""
    headers = {"Content-Type": "application/json"}
    if token:
        with open(os.environ["RAY_AUTH_TOKEN_PATH"]) as f:
            headers["Authorization"] = f"Bearer {f.read().strip()}"
    request = urllib.request.Request(url, headers=headers, data=post.encode() if post is not None else None,
                                     method="POST" if post is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return {"status": response.status, "body": response.read().decode(errors="replace")[:20000]}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")[:2000]}


def job_tasks(url: str, submission_id: str) -> dict:
    """The job's tasks: ``{"job_id", "status", "nodes": {ip: {"tasks": n, "names": {name: n}}}}``."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_nodes, list_tasks

    info = JobSubmissionClient(url).get_job_info(submission_id)
    ips = {n.node_id: n.node_ip for n in list_nodes(address=url, raise_on_missing_output=False)}
    # Task events reach the GCS in batches (about every second): wait until the count stops growing.
    tasks, seen = [], -1
    for _ in range(20):
        tasks = list_tasks(address=url, filters=[("job_id", "=", info.job_id)], limit=10000, detail=True,
                           raise_on_missing_output=False)
        if len(tasks) == seen:
            break
        seen = len(tasks)
        time.sleep(1.5)
    nodes: dict[str, dict] = {}
    for t in tasks:
        if t.state != "FINISHED" or not t.node_id:
            continue
        entry = nodes.setdefault(ips.get(t.node_id, t.node_id), {"tasks": 0, "names": {}})
        entry["tasks"] += 1
        entry["names"][t.name] = entry["names"].get(t.name, 0) + 1
    return {"job_id": info.job_id, "status": str(info.status), "nodes": nodes}


def read(uri: str) -> dict:
    """The object at ``uri`` as text (through the project's own filesystem layer)."""
    from mvrec_dist.data.fs import open_input_file

    with open_input_file(uri) as f:
        return {"uri": uri, "text": f.read().decode("utf-8")}


def copy(src: str, dst: str) -> dict:
    """Copy the directory ``src`` to ``dst`` (both URIs of the same store); return the files copied."""
    import pyarrow.fs as pafs

    from mvrec_dist.data.fs import resolve

    fs, a = resolve(src)
    _, b = resolve(dst)
    files = [e for e in fs.get_file_info(pafs.FileSelector(a, recursive=True)) if e.type == pafs.FileType.File]
    pafs.copy_files(a, b, source_filesystem=fs, destination_filesystem=fs)
    return {"src": src, "dst": dst, "files": len(files)}


def ls(uri: str) -> dict:
    """Every file under ``uri`` (recursive), relative to it, with its size."""
    import pyarrow.fs as pafs

    from mvrec_dist.data.fs import resolve

    fs, root = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return {"uri": uri, "files": {e.path[len(root.rstrip("/")) + 1:]: e.size for e in infos
                                  if e.type == pafs.FileType.File}}


def train_windows(dataset: str, max_seq_len: int = 10) -> dict:
    """Every ``(global sample index, window index)`` of the train split (``data.train_windows=all``):
    what one epoch must deliver, each exactly once."""
    from mvrec_dist.data.batch import training_windows
    from mvrec_dist.data.plan import Chunk
    from mvrec_dist.data.reader import ShardReader

    reader = ShardReader(dataset, "train", members={"items.npy"})
    total = reader.num_samples
    # A chunk must lie inside one shard: chunks of the shard size when all shards have it (the tests' 200),
    # else of one sample.
    for size in (200, 1):
        out = []
        chunks = [Chunk(a, min(a + size, total), None, 0, min(a + size, total) - a) for a in range(0, total, size)]
        try:
            for g, sample in reader.iter_chunks(chunks):
                out += [[int(g), w] for w in
                        range(len(training_windows(sample.members["items.npy"], max_seq_len, "all")))]
            break
        except ValueError:
            continue
    return {"samples": total, "windows": sorted(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local.probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("mkbucket")
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("wait-nodes")
    p.add_argument("url")
    p.add_argument("count", type=int)
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("http-status")
    p.add_argument("url")
    p.add_argument("--token", action="store_true")
    p.add_argument("--post", help="POST this JSON body instead of a GET")
    p = sub.add_parser("job-tasks")
    p.add_argument("url")
    p.add_argument("submission_id")
    p = sub.add_parser("read")
    p.add_argument("uri")
    p = sub.add_parser("copy")
    p.add_argument("src")
    p.add_argument("dst")
    p = sub.add_parser("ls")
    p.add_argument("uri")
    p = sub.add_parser("train-windows")
    p.add_argument("dataset")
    a = parser.parse_args(argv)
    if a.cmd == "ls":
        out = ls(a.uri)
    elif a.cmd == "copy":
        out = copy(a.src, a.dst)
    elif a.cmd == "train-windows":
        out = train_windows(a.dataset)
    elif a.cmd == "mkbucket":
        out = mkbucket(a.timeout)
    elif a.cmd == "wait-nodes":
        out = wait_nodes(a.url, a.count, a.timeout)
    elif a.cmd == "http-status":
        out = http_status(a.url, a.token, a.post)
    elif a.cmd == "job-tasks":
        out = job_tasks(a.url, a.submission_id)
    else:
        out = read(a.uri)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
