"""Path checks: shared storage on multi-node clusters, ingested datasets, manifest member paths."""

from __future__ import annotations

import os

import fsspec
import pytest

from mvrec_dist.runtime.paths import (PathError, check_dataset_dir, check_manifest_path,
                                      check_storage_path, ray_working_dir_copy,
                                      relative_in_working_dir_copy)

MOUNTS = """\
/dev/nvme0n1p1 / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
fs-0123.efs.us-east-1.amazonaws.com:/ /mnt/mvrec nfs4 rw,vers=4.1 0 0
/dev/nvme1n1 /mnt/mvrec/scratch xfs rw 0 0
mvrec-bucket /mnt/gcs fuse.gcsfuse rw 0 0
10.0.0.2@tcp:/fsx /mnt/with\\040space lustre rw 0 0
"""


# ---------------------------------------------------------------- check_storage_path
@pytest.mark.parametrize("uri", ["s3://bucket/runs", "gs://bucket/mvrec/runs", "hdfs://nn:8020/runs",
                                 "abfs://container@account.dfs.core.windows.net/runs"])
def test_uris_are_shared_on_any_cluster(uri):
    assert check_storage_path(uri, num_nodes=4, mounts=MOUNTS) == uri


@pytest.mark.parametrize("path", ["/mnt/mvrec/runs", "/mnt/mvrec", "/mnt/gcs/a/b", "/mnt/with space/r"])
def test_paths_on_network_mounts_are_shared(path):
    assert check_storage_path(path, num_nodes=3, mounts=MOUNTS) == path


@pytest.mark.parametrize("path,fs_type,mount_point", [
    ("/home/me/runs", "ext4", "/"),
    ("/dev/shm/runs", "tmpfs", "/dev/shm"),
    # A local disk mounted below a shared mount shadows it.
    ("/mnt/mvrec/scratch/runs", "xfs", "/mnt/mvrec/scratch"),
    # Prefix match is per path component: /mnt/mvrec-local is not under /mnt/mvrec.
    ("/mnt/mvrec-local/runs", "ext4", "/"),
    ("file:///home/me/runs", "ext4", "/"),
])
def test_local_paths_on_multi_node_clusters_fail_with_one_actionable_line(path, fs_type, mount_point):
    with pytest.raises(PathError) as info:
        check_storage_path(path, num_nodes=3, mounts=MOUNTS)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"train.storage_path={path} is a local path ({fs_type} filesystem "
                              f"mounted at {mount_point}) but the cluster has 3 nodes")
    assert "s3://" in message and "shared filesystem mount" in message


def test_local_paths_are_fine_on_one_node_and_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_storage_path("runs", num_nodes=1, mounts=MOUNTS) == str(tmp_path / "runs")
    assert check_storage_path("file:///home/me/runs", num_nodes=1) == "/home/me/runs"


def test_symlinks_are_resolved_before_the_mount_lookup(tmp_path):
    link = tmp_path / "runs"
    link.symlink_to("/mnt/mvrec/runs")
    assert check_storage_path(str(link), num_nodes=2, mounts=MOUNTS) == str(link)
    shared_table = MOUNTS + f"nas:/export {tmp_path} nfs rw 0 0\n"
    away = tmp_path / "away"
    away.symlink_to("/home/me/runs")
    with pytest.raises(PathError, match=r"local path \(ext4 filesystem mounted at /\)"):
        check_storage_path(str(away), num_nodes=2, mounts=shared_table)


@pytest.mark.parametrize("uri", ["memory://bucket/runs", "mock:///runs", "local:///runs"])
def test_node_local_uri_schemes_are_not_shared(uri):
    assert check_storage_path(uri, num_nodes=1) == uri
    with pytest.raises(PathError, match=r"^train.storage_path=.* storage, inside one process or node, but the "
                                        r"cluster has 2 nodes; use a shared filesystem mount or an s3://"):
        check_storage_path(uri, num_nodes=2)


def test_s3_with_an_endpoint_override_is_shared_unless_the_endpoint_is_loopback():
    # The local test cluster's store (cluster/local): s3:// URIs, the endpoint in the environment.
    store = {"AWS_ENDPOINT_URL": "http://10.201.0.2:9000"}
    assert check_storage_path("s3://mvrec/runs", num_nodes=3, environ=store) == "s3://mvrec/runs"
    for env, var in (({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}, "AWS_ENDPOINT_URL"),
                     ({"AWS_ENDPOINT_URL": "http://10.201.0.2:9000", "AWS_ENDPOINT_URL_S3": "http://localhost:9000"},
                      "AWS_ENDPOINT_URL_S3")):
        with pytest.raises(PathError, match=rf"^train.storage_path=s3://mvrec/runs: {var}=\S+ is a loopback address"):
            check_storage_path("s3://mvrec/runs", num_nodes=2, environ=env)
        assert check_storage_path("s3://mvrec/runs", num_nodes=1, environ=env) == "s3://mvrec/runs"
    assert check_storage_path("gs://b/runs", num_nodes=2, environ={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"})


def test_storage_uris_with_a_query_string_are_refused_on_any_cluster():
    uri = "s3://mvrec/runs?endpoint_override=10.201.0.2:9000&scheme=http"
    for nodes in (1, 3):
        with pytest.raises(PathError, match=r"has a query string or fragment, which run and shard paths would be "
                                            r"appended to; .*AWS_ENDPOINT_URL=http://host:port"):
            check_storage_path(uri, num_nodes=nodes, environ={})


def test_the_key_is_named_and_extra_shared_types_are_accepted():
    table = "/dev/sda1 / ext4 rw 0 0\nremote: /mnt/r fuse.rclone rw 0 0\n"
    with pytest.raises(PathError, match=r"^data.dataset_dir=/mnt/r/x is a local path \(fuse.rclone"):
        check_storage_path("/mnt/r/x", num_nodes=2, key="data.dataset_dir", mounts=table)
    assert check_storage_path("/mnt/r/x", num_nodes=2, mounts=table,
                              shared_fs_types={"fuse.rclone"}) == "/mnt/r/x"


def test_this_machines_own_mount_table_is_read():
    if not os.path.exists("/proc/self/mounts"):
        pytest.skip("no /proc/self/mounts on this OS")
    # pytest's own temp dirs live on a local disk here; a multi-node run must refuse them.
    with pytest.raises(PathError, match="is a local path"):
        check_storage_path("/tmp/mvrec-runs", num_nodes=2)


def test_empty_path_is_refused():
    with pytest.raises(PathError, match="train.storage_path is empty"):
        check_storage_path("", num_nodes=1)


# ---------------------------------------------------------------- check_dataset_dir
def _dataset(root):
    root.mkdir(parents=True)
    (root / "manifest.json").write_text("{}")
    return root


def test_dataset_with_manifest_passes(tmp_path, monkeypatch):
    ds = _dataset(tmp_path / "shards" / "demo")
    assert check_dataset_dir(str(ds)) == str(ds)
    monkeypatch.chdir(tmp_path)
    assert check_dataset_dir("shards/demo") == str(ds)
    assert check_dataset_dir(f"file://{ds}") == str(ds)


def test_missing_dataset_says_to_run_the_ingest_job(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(PathError) as info:
        check_dataset_dir(str(missing))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"data.dataset_dir={missing} does not exist; run the ingest job first: "
                              "python jobs/ingest_microlens.py")
    assert f"ingest.output_dir={missing}" in message


def test_directory_without_manifest_is_an_unfinished_ingestion(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(PathError, match=r"has no manifest.json \(ingestion unfinished"):
        check_dataset_dir(str(tmp_path))


def test_a_file_is_not_a_dataset(tmp_path):
    f = tmp_path / "manifest.json"
    f.write_text("{}")
    with pytest.raises(PathError, match="is a file, not a dataset directory"):
        check_dataset_dir(str(f), key="eval.dataset")


def test_missing_uri_dataset_is_checked_through_its_filesystem():
    # pyarrow's mock filesystem is a fresh, empty store on every resolve.
    with pytest.raises(PathError, match=r"^data.dataset_dir=mock:///ds does not exist; run the ingest job"):
        check_dataset_dir("mock:///ds")


def test_uri_datasets_are_checked_through_their_filesystem():
    # fsspec's in-process memory filesystem stands in for an object store.
    mem = fsspec.filesystem("memory")
    mem.pipe("/mvrec-test-paths/ds/manifest.json", b"{}")
    mem.pipe("/mvrec-test-paths/half/train/train-00000.tar", b"x")
    try:
        assert check_dataset_dir("memory://mvrec-test-paths/ds") == "memory://mvrec-test-paths/ds"
        with pytest.raises(PathError, match="has no manifest.json"):
            check_dataset_dir("memory://mvrec-test-paths/half")
        with pytest.raises(PathError, match="does not exist; run the ingest job"):
            check_dataset_dir("memory://mvrec-test-paths/none")
    finally:
        mem.rm("/mvrec-test-paths", recursive=True)


# ---------------------------------------------------------------- check_manifest_path
@pytest.mark.parametrize("relative,expected", [
    ("train/train-00000.tar", "train/train-00000.tar"),
    ("./maps/items.npy", "maps/items.npy"),
    ("train//a/../train-00001.tar", "train/train-00001.tar"),
])
def test_relative_member_paths_join_onto_the_dataset(tmp_path, relative, expected):
    assert check_manifest_path(str(tmp_path), relative) == f"{tmp_path}/{expected}"
    assert check_manifest_path("s3://b/ds/", relative) == f"s3://b/ds/{expected}"


@pytest.mark.parametrize("relative,problem", [
    ("", "is empty"),
    ("/etc/passwd", "is absolute"),
    ("s3://other/bucket.tar", "is absolute"),
    ("C:/shards/a.tar", "is absolute"),
    ("..\\..\\x.tar", "holds a NUL or backslash"),
    ("train/a.tar\x00.npy", "holds a NUL or backslash"),
    ("../other/train.tar", "does not name a file inside the dataset directory"),
    ("train/../../x.tar", "does not name a file inside the dataset directory"),
    ("train/..", "does not name a file inside the dataset directory"),
])
def test_escaping_member_paths_are_refused(tmp_path, relative, problem):
    with pytest.raises(PathError) as info:
        check_manifest_path(str(tmp_path), relative, where="splits.train.shards[3].path")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path}/manifest.json: splits.train.shards[3].path {relative!r} {problem}")
    assert "re-run the ingest job" in message


def test_symlinks_out_of_a_local_dataset_are_refused(tmp_path):
    ds = _dataset(tmp_path / "ds")
    outside = tmp_path / "secret.tar"
    outside.write_bytes(b"x")
    (ds / "train").mkdir()
    (ds / "train" / "train-00000.tar").symlink_to(outside)
    with pytest.raises(PathError, match="resolves through a symlink to .*outside the dataset directory"):
        check_manifest_path(str(ds), "train/train-00000.tar")
    inside = ds / "train" / "real.tar"
    inside.write_bytes(b"y")
    (ds / "train" / "alias.tar").symlink_to(inside)
    assert check_manifest_path(str(ds), "train/alias.tar") == f"{ds}/train/alias.tar"


# ---------------------------------------------------------------- check_input_path
def test_inputs_that_exist(tmp_path):
    from mvrec_dist.runtime.paths import check_input_path

    (tmp_path / "a.tsv").write_text("1\t2\n")
    for spec in (str(tmp_path / "a.tsv"), str(tmp_path), str(tmp_path / "*.tsv"), f"file://{tmp_path / 'a.tsv'}"):
        assert check_input_path(spec, key="ingest.input", hint="h") in (str(tmp_path / "a.tsv"), str(tmp_path),
                                                                        str(tmp_path / "*.tsv"))


@pytest.mark.parametrize("name,extra", [("nope.tsv", ""), ("*.csv", " (the glob matches nothing)")])
def test_missing_inputs_are_one_line(tmp_path, name, extra):
    from mvrec_dist.runtime.paths import check_input_path

    with pytest.raises(PathError) as exc:
        check_input_path(str(tmp_path / name), key="ingest.input", hint="point it at the interactions")
    assert str(exc.value) == f"ingest.input={tmp_path / name} does not exist{extra}; point it at the interactions"


def test_a_missing_input_in_an_fsspec_store():
    from mvrec_dist.runtime.paths import check_input_path

    fs = fsspec.filesystem("memory")
    fs.pipe("/mvrec-inputs/pairs.tsv", b"1\t2\n")
    assert check_input_path("memory://mvrec-inputs/pairs.tsv", key="k", hint="h") == "memory://mvrec-inputs/pairs.tsv"
    with pytest.raises(PathError, match="k=memory://mvrec-inputs/other.tsv does not exist; h"):
        check_input_path("memory://mvrec-inputs/other.tsv", key="k", hint="h")


# ---------------------------------------------------------------- ray job submit --working-dir
COPY = "/tmp/ray/session_2026-12-04_10-00-00_1_2/runtime_resources/working_dir_files/_ray_pkg_0123abcd"


def test_working_dir_copy_found_from_any_directory_inside_it():
    assert ray_working_dir_copy(COPY) == COPY
    assert ray_working_dir_copy(COPY + "/jobs") == COPY
    assert ray_working_dir_copy("/home/me/mvrec_dist") is None


def test_relative_paths_in_a_working_dir_copy_are_named_once_each():
    warning = relative_in_working_dir_copy({"train.storage_path": "runs", "data.dataset_dir": "data/shards/x"},
                                           cwd=COPY)
    assert warning is not None and warning.startswith("warning: ")
    assert "train.storage_path=runs, data.dataset_dir=data/shards/x are relative" in warning
    assert COPY in warning and "cluster/README.md" in warning


@pytest.mark.parametrize("paths, cwd", [
    ({"train.storage_path": "s3://bucket/runs", "data.dataset_dir": "/mnt/nfs/shards"}, COPY),  # nothing relative
    ({"train.storage_path": "runs", "data.dataset_dir": "data/shards/x"}, "/home/me/mvrec_dist"),  # not submitted
    ({"train.storage_path": None, "data.dataset_dir": "file:///mnt/x"}, COPY),
])
def test_no_warning_for_absolute_paths_or_outside_a_copy(paths, cwd):
    assert relative_in_working_dir_copy(paths, cwd=cwd) is None
