"""Where checkpoints live: a local directory, or an S3-compatible bucket (``s3://bucket/prefix``).

Both hold the same names: model ``<id>`` is ``<id>.safetensors`` and alias ``<name>`` is
``aliases/<name>.json`` (``{"model_id": ...}``). Both publish atomically: a local file is
written beside its name and renamed; an S3 object becomes visible only when its one PUT
completes, so a writer killed mid-upload leaves nothing listed.

A checkpoint's *version* changes whenever its bytes do (local: mtime and size; S3: the ETag),
so readers verify each version once. ``fetch`` gives a local file for a model: the file itself,
or a download into a bounded cache directory that several processes may share.

S3 is reached with boto3, which reads the standard AWS settings (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, profiles, instance
roles), so AWS S3, SeaweedFS, MinIO, Ceph, R2 and GCS's S3 endpoint all work.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from models.files import write_atomically

S3Client = Any  # boto3's clients are made at run time; their types come from a separate stubs package

__all__ = [
    "SUFFIX",
    "CheckpointStorage",
    "LocalStorage",
    "ObjectStoreUnavailable",
    "S3Storage",
    "download_s3_url",
    "is_s3_url",
    "open_storage",
    "s3_client",
    "split_s3_url",
    "upload_s3_url",
]

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
ALIASES = "aliases"
EXPORTS = "exports"
# Cached files another process may be about to read are spared this long by eviction.
RECENTLY_USED_S = 60.0


class ObjectStoreUnavailable(RuntimeError):
    """The object store cannot be reached, or refuses us (credentials, missing bucket); the message says which."""


class CheckpointStorage(Protocol):
    """What the model store needs of a place that holds checkpoints and aliases (ids already validated)."""

    location: str  # for messages: a directory or an s3:// URL
    exports_dir: Path  # a local directory for cached exports
    suffix: str  # what follows an id in its object's name (``.safetensors`` for checkpoints)

    def under(self, prefix: str, *, suffix: str, cache_dir: str | os.PathLike[str],
              max_cache_bytes: int) -> CheckpointStorage:
        """Another kind of object in the same place, under ``prefix/`` (``datasets/``), with its own cache."""

    def versions(self) -> dict[str, str]:
        """Every checkpoint's id and version."""

    def version(self, model_id: str) -> str | None:
        """One checkpoint's version, or None when there is none."""

    def fetch(self, model_id: str, version: str | None = None) -> tuple[Path, str]:
        """A local file with the checkpoint's bytes, and their version; FileNotFoundError when gone.

        Given the ``version`` a listing showed, a cached copy of it is used without asking the store.
        """

    def publish(self, model_id: str, payload: bytes, before_commit: Callable[[], None] | None = None) -> str:
        """Store ``payload`` under ``model_id`` atomically (``before_commit`` runs just before it is visible)."""

    def delete(self, model_id: str) -> bool:
        """Remove the checkpoint; False when there was none."""

    def aliases(self) -> dict[str, str]:
        """Every alias and the model id it points at."""

    def put(self, name: str, payload: bytes, before_commit: Callable[[], None] | None = None) -> str:
        """Store ``payload`` under the relative ``name`` (``state/<id>.safetensors``) atomically, as ``publish`` does."""

    def get(self, name: str) -> bytes:
        """The bytes stored under ``name``; FileNotFoundError when there are none."""

    def remove(self, name: str) -> bool:
        """Remove what is stored under ``name``; False when there was nothing."""

    def set_alias(self, alias: str, model_id: str) -> None: ...

    def delete_alias(self, alias: str) -> bool:
        """Remove the alias; False when there was none."""


def _alias_payload(model_id: str) -> bytes:
    return json.dumps({"model_id": model_id, "updated_at": datetime.now(UTC).isoformat()}).encode()


def _alias_target(raw: bytes) -> str | None:
    try:
        target = json.loads(raw).get("model_id")
    except (ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None


class LocalStorage:
    """Checkpoints as files in one directory (the embedded default, or a shared filesystem)."""

    def __init__(self, directory: str | os.PathLike[str], *, suffix: str = SUFFIX) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.exports_dir = self.directory / EXPORTS
        self.suffix = suffix

    def under(self, prefix: str, *, suffix: str, cache_dir: str | os.PathLike[str],
              max_cache_bytes: int) -> LocalStorage:
        """The same storage's ``prefix/`` folder, holding objects named ``<id><suffix>`` (nothing to cache here)."""
        return LocalStorage(self.directory / prefix, suffix=suffix)

    def path(self, model_id: str) -> Path:
        return self.directory / f"{model_id}{self.suffix}"

    @staticmethod
    def _stamp(st: os.stat_result) -> str:
        return f"{st.st_mtime_ns}-{st.st_size}"

    def versions(self) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.endswith(self.suffix) and not entry.name.startswith("."):  # ".name.tmp": a write under way
                try:
                    found[entry.name[: -len(self.suffix)]] = self._stamp(entry.stat())
                except OSError:
                    continue
        return found

    def version(self, model_id: str) -> str | None:
        try:
            return self._stamp(self.path(model_id).stat())
        except OSError:
            return None

    def fetch(self, model_id: str, version: str | None = None) -> tuple[Path, str]:
        path = self.path(model_id)
        version = self.version(model_id)
        if version is None:
            raise FileNotFoundError(path)
        return path, version

    def publish(self, model_id: str, payload: bytes, before_commit: Callable[[], None] | None = None) -> str:
        return self.put(model_id + self.suffix, payload, before_commit)

    def delete(self, model_id: str) -> bool:
        return self.remove(model_id + self.suffix)

    def put(self, name: str, payload: bytes, before_commit: Callable[[], None] | None = None) -> str:
        return str(write_atomically(self.directory / name, payload, before_commit=before_commit))

    def get(self, name: str) -> bytes:
        return (self.directory / name).read_bytes()

    def remove(self, name: str) -> bool:
        return _remove(self.directory / name)

    def _alias_path(self, alias: str) -> Path:
        return self.directory / ALIASES / f"{alias}.json"

    def aliases(self) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.directory / ALIASES))
        except FileNotFoundError:
            return found
        for entry in entries:
            if entry.name.endswith(".json") and not entry.name.startswith("."):
                try:
                    target = _alias_target(Path(entry.path).read_bytes())
                except OSError:
                    continue
                if target is not None:
                    found[entry.name[: -len(".json")]] = target
        return found

    def set_alias(self, alias: str, model_id: str) -> None:
        write_atomically(self._alias_path(alias), _alias_payload(model_id))

    def delete_alias(self, alias: str) -> bool:
        return self.remove(f"{ALIASES}/{alias}.json")


def _remove(path: Path) -> bool:
    """Unlink ``path``; False when there was nothing to remove."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def is_s3_url(location: str | os.PathLike[str]) -> bool:
    return str(location).startswith("s3://")


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` -> ``("bucket", "some/key")``; a ValueError says what is wrong."""
    if not is_s3_url(url):
        raise ValueError(f"{url!r} is not an s3:// URL")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket: write s3://BUCKET/PREFIX")
    return bucket, key.strip("/")


def s3_client(*, connect_timeout: float = 2.0, read_timeout: float = 10.0, attempts: int = 2,
              endpoint_url: str | None = None, credentials: tuple[str, str] | None = None) -> S3Client:
    """A boto3 S3 client configured from the standard AWS settings (or the ones given), with short timeouts.

    With ``AWS_ENDPOINT_URL`` (a self-hosted server) buckets are addressed by path, which every
    S3-compatible server understands; checksums are sent only where S3 requires them, as
    several of those servers reject the newer default ones.
    """
    import boto3
    from botocore.config import Config

    custom = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    addressing = "path" if custom else "auto"
    config = Config(
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": addressing},
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    given: dict[str, str] = {"endpoint_url": endpoint_url} if endpoint_url else {}
    if credentials is not None:
        given.update(aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1])
    return boto3.client("s3", config=config, **given)


def _is_missing(exc: Exception) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


class S3Storage:
    """Checkpoints as objects under ``s3://bucket/prefix``, with a bounded local cache of downloads."""

    def __init__(self, url: str, cache_dir: str | os.PathLike[str], *, max_cache_bytes: int = 1 << 30,
                 upload_retry_s: float = 60.0, recently_used_s: float = RECENTLY_USED_S,
                 client: S3Client | None = None, suffix: str = SUFFIX) -> None:
        self.suffix = suffix
        self.bucket, self.prefix = split_s3_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.exports_dir = self.cache_dir / EXPORTS
        self.max_cache_bytes = max_cache_bytes
        self.upload_retry_s = upload_retry_s
        self.recently_used_s = recently_used_s
        self._client = client
        self._client_lock = threading.Lock()
        self._alias_cache: dict[str, tuple[str, str | None]] = {}  # key -> (etag, target)

    def under(self, prefix: str, *, suffix: str, cache_dir: str | os.PathLike[str],
              max_cache_bytes: int) -> S3Storage:
        """The same bucket's ``prefix/`` under this prefix, holding ``<id><suffix>`` objects, with its own
        bounded download cache (and this storage's client)."""
        with self._client_lock:
            client = self._client
        sub = S3Storage(f"{self.location}/{prefix}", cache_dir, max_cache_bytes=max_cache_bytes,
                        upload_retry_s=self.upload_retry_s, recently_used_s=self.recently_used_s, client=client,
                        suffix=suffix)
        return sub

    @property
    def client(self) -> S3Client:
        with self._client_lock:  # boto3 clients are thread-safe once made; making one is not
            if self._client is None:
                self._client = s3_client()
            return self._client

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """``fn(**kwargs)``; FileNotFoundError for a missing key, ObjectStoreUnavailable for everything else."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            if _is_missing(exc):
                raise FileNotFoundError(f"{self.location}: no {what}") from exc
            endpoint = getattr(self.client.meta, "endpoint_url", "?")
            raise ObjectStoreUnavailable(
                f"the object store {self.location} (endpoint {endpoint}) failed to {what}: {exc}"
            ) from exc

    def _list(self, prefix: str) -> list[dict[str, Any]]:
        objects: list[dict[str, Any]] = []
        token: dict[str, str] = {}
        while True:
            page = self._call("list objects", self.client.list_objects_v2, Bucket=self.bucket, Prefix=prefix,
                              Delimiter="/", **token)
            objects.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                return objects
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def versions(self) -> dict[str, str]:
        root = self._key("")
        found: dict[str, str] = {}
        for obj in self._list(root):
            name = obj["Key"][len(root):]
            if name.endswith(self.suffix) and not name.startswith("."):
                found[name[: -len(self.suffix)]] = str(obj["ETag"]).strip('"')
        return found

    def version(self, model_id: str) -> str | None:
        try:
            head = self._call("read a checkpoint", self.client.head_object, Bucket=self.bucket,
                              Key=self._key(model_id + self.suffix))
        except FileNotFoundError:
            return None
        return str(head["ETag"]).strip('"')

    def _cached(self, model_id: str, version: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in version)
        return self.cache_dir / f"{model_id}.{safe}{self.suffix}"

    def fetch(self, model_id: str, version: str | None = None) -> tuple[Path, str]:
        if version is not None:
            cached = self._cached(model_id, version)
            if cached.is_file():
                os.utime(cached)  # recently used: the last to be evicted
                return cached, version
        answer = self._call("download a checkpoint", self.client.get_object, Bucket=self.bucket,
                            Key=self._key(model_id + self.suffix))
        version = str(answer["ETag"]).strip('"')
        try:
            body = answer["Body"].read()
        except Exception as exc:  # the connection broke mid-download
            raise ObjectStoreUnavailable(f"the object store {self.location} broke off a download: {exc}") from exc
        cached = write_atomically(self._cached(model_id, version), body)
        self._evict(keep=cached)
        return cached, version

    def _evict(self, keep: Path) -> None:
        """Drop older versions of ``keep``'s model, then the least recently used files, down to the byte bound."""
        files = []
        model_prefix = keep.name.split(".", 1)[0] + "."
        for entry in os.scandir(self.cache_dir):
            if not entry.name.endswith(self.suffix) or entry.name.startswith(".") or entry.path == str(keep):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            if entry.name.startswith(model_prefix):
                Path(entry.path).unlink(missing_ok=True)  # a replaced version of the same model
                continue
            files.append((st.st_mtime, st.st_size, Path(entry.path)))
        total = keep.stat().st_size + sum(size for _, size, _ in files)
        now = time.time()
        for mtime, size, path in sorted(files):  # least recently used first
            if total <= self.max_cache_bytes:
                break
            if now - mtime < self.recently_used_s:
                continue  # another process may be about to read it
            path.unlink(missing_ok=True)
            total -= size

    def publish(self, model_id: str, payload: bytes, before_commit: Callable[[], None] | None = None) -> str:
        return self._upload(model_id + self.suffix, payload, before_commit, "upload a checkpoint")

    def put(self, name: str, payload: bytes, before_commit: Callable[[], None] | None = None) -> str:
        return self._upload(name, payload, before_commit, f"upload {name}")

    def _upload(self, name: str, payload: bytes, before_commit: Callable[[], None] | None, what: str) -> str:
        """Upload in one PUT, retrying an unreachable store for ``upload_retry_s``, then raise with the reason."""
        key = self._key(name)
        # The store refuses a body that does not match: nothing truncated on the way is ever stored.
        digest = base64.b64encode(hashlib.md5(payload, usedforsecurity=False).digest()).decode()
        deadline = time.monotonic() + self.upload_retry_s
        pause = 0.5
        while True:
            if before_commit is not None:
                before_commit()  # before every try: the right to publish may have been lost meanwhile
            try:
                self._call(what, self.client.put_object, Bucket=self.bucket, Key=key, Body=payload,
                           ContentType="application/octet-stream", ContentMD5=digest)
                return f"s3://{self.bucket}/{key}"
            except ObjectStoreUnavailable as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ObjectStoreUnavailable(f"{exc} (still failing after {self.upload_retry_s:.0f} s of retries)") \
                        from exc
                log.warning("upload of %s failed, retrying in %.1f s: %s", key, min(pause, remaining), exc)
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, 5.0)

    def delete(self, model_id: str) -> bool:
        return self.remove(model_id + self.suffix)

    def get(self, name: str) -> bytes:
        answer = self._call(f"download {name}", self.client.get_object, Bucket=self.bucket, Key=self._key(name))
        try:
            return bytes(answer["Body"].read())
        except Exception as exc:  # the connection broke mid-download
            raise ObjectStoreUnavailable(f"the object store {self.location} broke off a download: {exc}") from exc

    def remove(self, name: str) -> bool:
        key = self._key(name)
        try:
            self._call(f"read {name}", self.client.head_object, Bucket=self.bucket, Key=key)
        except FileNotFoundError:
            return False
        self._call(f"delete {name}", self.client.delete_object, Bucket=self.bucket, Key=key)
        return True

    def aliases(self) -> dict[str, str]:
        root = self._key(ALIASES + "/")
        found: dict[str, str] = {}
        seen: set[str] = set()
        for obj in self._list(root):
            key, etag = obj["Key"], str(obj["ETag"])
            name = key[len(root):]
            if not name.endswith(".json"):
                continue
            seen.add(key)
            cached = self._alias_cache.get(key)
            if cached is None or cached[0] != etag:  # read an alias once per version
                try:
                    raw = self._call("read an alias", self.client.get_object, Bucket=self.bucket, Key=key)["Body"].read()
                except FileNotFoundError:
                    continue
                cached = self._alias_cache[key] = (etag, _alias_target(raw))
            if cached[1] is not None:
                found[name[: -len(".json")]] = cached[1]
        for gone in set(self._alias_cache) - seen:
            self._alias_cache.pop(gone, None)
        return found

    def set_alias(self, alias: str, model_id: str) -> None:
        self._call("write an alias", self.client.put_object, Bucket=self.bucket,
                   Key=self._key(f"{ALIASES}/{alias}.json"), Body=_alias_payload(model_id),
                   ContentType="application/json")

    def delete_alias(self, alias: str) -> bool:
        return self.remove(f"{ALIASES}/{alias}.json")


def open_storage(location: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str],
                 max_cache_bytes: int = 1 << 30, upload_retry_s: float = 60.0) -> CheckpointStorage:
    """The storage ``location`` names: an ``s3://bucket/prefix`` URL, else a local directory."""
    if is_s3_url(location):
        return S3Storage(str(location), cache_dir, max_cache_bytes=max_cache_bytes, upload_retry_s=upload_retry_s)
    return LocalStorage(location)


def download_s3_url(url: str, directory: str | os.PathLike[str]) -> Path:
    """Download one object (``s3://bucket/key``) into ``directory``; returns the file."""
    bucket, key = split_s3_url(url)
    if not key:
        raise ValueError(f"{url!r} names a bucket, not an object")
    storage = S3Storage(f"s3://{bucket}", directory)
    answer = storage._call(f"download {url}", storage.client.get_object, Bucket=bucket, Key=key)
    return write_atomically(Path(directory) / Path(key).name, answer["Body"].read())


def upload_s3_url(path: str | os.PathLike[str], url: str) -> str:
    """Upload a local file to ``s3://bucket/key`` in one PUT; returns the URL."""
    bucket, key = split_s3_url(url)
    if not key:
        raise ValueError(f"{url!r} names a bucket, not an object: add the object's name")
    storage = S3Storage(f"s3://{bucket}", Path(path).parent)
    storage._call(f"upload {url}", storage.client.put_object, Bucket=bucket, Key=key, Body=Path(path).read_bytes())
    return url
