"""URIs -> filesystems. Local paths and any fsspec scheme (s3://, gs://, az://).

S3 endpoints and credentials come from the environment or the AWS profile
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE`` ...), never from code.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from contextlib import contextmanager

import fsspec
from fsspec.implementations.local import LocalFileSystem

# Environment variables that configure object storage. Only the non-secret ones travel to
# Ray workers (ray_session.forwarded_env); credentials are resolved on each node.
STORAGE_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_NAME",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return ``(fs, path)`` for ``uri``; the path has no scheme."""
    if not is_remote(uri):
        path = uri.removeprefix("file://")
        return LocalFileSystem(auto_mkdir=True), os.path.abspath(os.path.expanduser(path))
    scheme = uri.split("://", 1)[0]
    kwargs = {}
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["client_kwargs"] = {"endpoint_url": endpoint}
        scheme = "s3"
    try:
        fs = fsspec.filesystem(scheme, **kwargs)
    except (ImportError, ValueError) as e:
        raise ValueError(f"{uri}: no filesystem for scheme {scheme!r} ({e})") from e
    return fs, fs._strip_protocol(uri)


def pyarrow_filesystem(uri: str):
    """``(pyarrow.fs.FileSystem, path)`` for Ray Data readers and writers."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def uri_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Inverse of :func:`filesystem`."""
    if isinstance(fs, LocalFileSystem):
        return path
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple | list) else fs.protocol
    return f"{proto}://{path}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return f.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data: bytes) -> None:
    """Publish ``data`` at ``uri`` whole or not at all.

    Locally a hidden temp file in the same folder (readers such as pyarrow datasets skip
    names starting with ``.``), fsynced and renamed over the final name; on object stores
    one PUT of the final key, which readers see whole or not at all.
    """
    fs, path = filesystem(uri)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, data)
        return
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def parquet_bytes(df, schema=None) -> bytes:
    """A DataFrame as Parquet bytes (microsecond timestamps: Spark cannot read Parquet's
    nanosecond ones by default)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df.reset_index(drop=True), schema=schema, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, coerce_timestamps="us", allow_truncated_timestamps=True)
    return buf.getvalue()


def write_parquet(uri: str, df, schema=None) -> None:
    """Write ``df`` as one Parquet file at ``uri``, atomically (:func:`write_bytes`)."""
    write_bytes(uri, parquet_bytes(df, schema))


def read_parquet(uri: str):
    """One Parquet file at ``uri`` as a DataFrame."""
    import pyarrow.parquet as pq

    fs, path = filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f).to_pandas()


@contextmanager
def local_copy(uri: str):
    """Yield a local path holding ``uri`` (downloaded to a temp dir when remote)."""
    if not is_remote(uri):
        yield filesystem(uri)[1]
        return
    import tempfile

    fs, path = filesystem(uri)
    with tempfile.TemporaryDirectory() as tmp:
        dest = os.path.join(tmp, posixpath.basename(path.rstrip("/")))
        fs.get(path, dest, recursive=fs.isdir(path))
        yield dest


def _probe(uri: str, check):
    """``check(fs, path)``, with endpoint/credential/DNS failures reported as one line."""
    try:
        fs, path = filesystem(uri)
        return check(fs, path)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as e:  # credentials, endpoint, DNS: all end up here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConnectionError(f"cannot reach {uri}: {reason} "
                              "(check AWS_ENDPOINT_URL and the credentials)") from e


def check_readable(uri: str) -> None:
    """Fail fast, naming the URI, when it does not exist or cannot be reached."""
    if not _probe(uri, lambda fs, path: fs.exists(path)):
        raise FileNotFoundError(f"{uri} does not exist (or is not visible with these credentials)")


def check_writable(uri: str) -> None:
    """Fail fast, naming the URI, when outputs cannot go there (no bucket, read-only folder)."""
    if is_remote(uri):
        def bucket_exists(fs, path):
            bucket = path.split("/", 1)[0]
            # info, not exists: s3fs's exists() says False for an unreachable endpoint too
            try:
                fs.info(bucket)
            except FileNotFoundError:
                raise FileNotFoundError(f"bucket {bucket!r} of {uri} does not exist") from None
            except PermissionError as e:
                raise PermissionError(f"access to bucket {bucket!r} of {uri} denied: {e} "
                                      "(check the credentials)") from None
        _probe(uri, bucket_exists)
        return
    path = filesystem(uri)[1]
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"{uri}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"{uri}: cannot write under {parent}")


@contextmanager
def local_copy_for_write(uri: str):
    """Yield a local path to write; it is uploaded to ``uri`` afterwards when remote."""
    if not is_remote(uri):
        path = filesystem(uri)[1]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        yield path
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, posixpath.basename(uri))
        yield local
        fs, path = filesystem(uri)
        fs.put(local, path)
