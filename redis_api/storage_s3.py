"""Outputs and inputs in an S3-compatible bucket: `STORAGE_URL=s3://bucket/prefix`.

Through aiobotocore (botocore's maintained asyncio port: the same request signing, retries,
endpoint and credential resolution as boto3 and the AWS CLI, on aiohttp which the hub already
runs). Endpoint and credentials come from the usual names: AWS_ENDPOINT_URL (or
AWS_ENDPOINT_URL_S3), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION /
AWS_DEFAULT_REGION, AWS_PROFILE. Keys: `<prefix>/<job_id>/<name>`; inputs under
`<prefix>/inputs/<sha256>`. Chunked writes are multipart uploads in PART_BYTES parts (memory: one
part per transfer); nothing is visible under a name until the upload completes.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError, StorageError
from .storage import MARKER, READ_CHUNK_BYTES, OutputWriter

PART_BYTES = 8 << 20  # S3 parts must be >= 5 MiB (but the last)
_JOB_DIR = re.compile(r"[0-9a-f]{32}")


def parse_storage_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket/prefix`."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ConfigError(f"STORAGE_URL={url!r} must look like s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


def _plain(part: str) -> str:
    if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part:
        raise ValueError(f"not a plain file name: {part!r}")
    return part


def _missing(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    code = str((response or {}).get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


class S3Storage:
    """The Storage interface (redis_api/storage.py) on a bucket. Every failure of the object
    store is a StorageError (a job attempt ends with `storage_error`)."""

    def __init__(self, url: str, endpoint_url: str | None = None, region: str | None = None):
        self.bucket, self.prefix = parse_storage_url(url)
        self._endpoint_url = endpoint_url
        self._region = region
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def client(self) -> Any:
        if self._client is None:
            from aiobotocore.session import get_session  # only hubs that use S3 import it

            session = get_session()
            self._client = await self._stack.enter_async_context(
                session.create_client(
                    "s3", endpoint_url=self._endpoint_url, region_name=self._region
                )
            )
        return self._client

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None

    def key(self, job_id: str, name: str) -> str:
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, _plain(job_id), _plain(name)])

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    async def claim_root(self, owner: str) -> None:
        """Like LocalDirStorage.claim_root: the prefix is ours (a marker object names the
        store), or it is refused; the sweeper deletes only under a marked prefix."""
        s3 = await self.client()
        marker = self._root() + MARKER
        try:
            found = await s3.get_object(Bucket=self.bucket, Key=marker)
            async with found["Body"] as body:
                text = (await body.read()).decode().strip()
        except Exception as exc:
            if not _missing(exc):
                raise ConfigError(f"STORAGE_URL s3://{self.bucket}/{self.prefix}: {exc}") from None
            listed = await s3.list_objects_v2(Bucket=self.bucket, Prefix=self._root(), MaxKeys=1)
            if listed.get("KeyCount", 0):
                raise ConfigError(
                    f"s3://{self.bucket}/{self.prefix} is not empty and has no {MARKER} marker: "
                    "the hub deletes expired outputs there, so give it a prefix of its own"
                ) from None
            await s3.put_object(Bucket=self.bucket, Key=marker, Body=(owner + "\n").encode())
            return
        if text != owner:
            raise ConfigError(
                f"s3://{self.bucket}/{self.prefix} belongs to another hub store ({text})"
            )

    async def put(self, job_id: str, name: str, data: bytes) -> int:
        try:
            s3 = await self.client()
            await s3.put_object(Bucket=self.bucket, Key=self.key(job_id, name), Body=data)
        except ValueError:
            raise
        except Exception as exc:
            raise StorageError(f"S3 put: {exc}") from exc
        return len(data)

    async def get(self, job_id: str, name: str) -> bytes | None:
        try:
            chunks = [chunk async for chunk in self.read_chunks(job_id, name)]
        except FileNotFoundError:
            return None
        return b"".join(chunks)

    async def size(self, job_id: str, name: str) -> int | None:
        try:
            key = self.key(job_id, name)
        except ValueError:
            return None
        try:
            s3 = await self.client()
            head = await s3.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _missing(exc):
                return None
            raise StorageError(f"S3 head: {exc}") from exc
        return int(head["ContentLength"])

    async def delete_job(self, job_id: str) -> None:
        if not (_JOB_DIR.fullmatch(job_id) or job_id == "inputs"):
            return
        try:
            s3 = await self.client()
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(
                Bucket=self.bucket, Prefix=f"{self._root()}{job_id}/"
            ):
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if objects:
                    await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})
        except Exception as exc:
            raise StorageError(f"S3 delete: {exc}") from exc

    async def job_ids(self) -> list[str]:
        try:
            s3 = await self.client()
            try:
                await s3.head_object(Bucket=self.bucket, Key=self._root() + MARKER)
            except Exception as exc:
                if _missing(exc):
                    return []  # not a prefix we marked: never sweep it
                raise
            found: list[str] = []
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(
                Bucket=self.bucket, Prefix=self._root(), Delimiter="/"
            ):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"][len(self._root()) :].rstrip("/")
                    if _JOB_DIR.fullmatch(name):
                        found.append(name)
            return found
        except Exception as exc:
            raise StorageError(f"S3 list: {exc}") from exc

    async def names(self, job_id: str) -> list[str]:
        start = f"{self._root()}{_plain(job_id)}/"
        try:
            s3 = await self.client()
            found: list[str] = []
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    name = str(item["Key"])[len(start) :]
                    if name and "/" not in name and not name.startswith("."):
                        found.append(name)
            return found
        except Exception as exc:
            raise StorageError(f"S3 list: {exc}") from exc

    async def delete_name(self, job_id: str, name: str) -> None:
        try:
            s3 = await self.client()
            await s3.delete_object(Bucket=self.bucket, Key=self.key(job_id, name))
        except Exception as exc:
            raise StorageError(f"S3 delete: {exc}") from exc

    async def open_writer(self, job_id: str, name: str) -> OutputWriter:
        key = self.key(job_id, name)
        try:
            s3 = await self.client()
        except Exception as exc:
            raise StorageError(f"S3: {exc}") from exc
        return _S3Writer(self, s3, key)

    async def read_chunks(self, job_id: str, name: str) -> AsyncIterator[bytes]:
        try:
            key = self.key(job_id, name)
        except ValueError:
            raise FileNotFoundError(name) from None
        try:
            s3 = await self.client()
            answer = await s3.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _missing(exc):
                raise FileNotFoundError(name) from None
            raise StorageError(f"S3 get: {exc}") from exc
        async with answer["Body"] as body:
            try:
                while chunk := await body.read(READ_CHUNK_BYTES):
                    yield chunk
            except Exception as exc:
                raise StorageError(f"S3 read: {exc}") from exc

    async def presigned_url(self, job_id: str, name: str, expires_s: int = 3600) -> str:
        """A time-limited GET URL for the object (OUTPUT_REDIRECT=presigned)."""
        s3 = await self.client()
        url: str = await s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(job_id, name)},
            ExpiresIn=expires_s,
        )
        return url


class _S3Writer:
    """A multipart upload, invisible until completed on commit; a commit under another name
    (content-addressed inputs) copies it there (inputs are far below S3's 5 GB copy limit)."""

    def __init__(self, storage: S3Storage, s3: Any, key: str) -> None:
        self._storage = storage
        self._s3 = s3
        self._key = key
        self._tmp = key  # where the parts go
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._upload_id: str | None = None

    async def _flush(self) -> None:
        bucket = self._storage.bucket
        if self._upload_id is None:
            started = await self._s3.create_multipart_upload(Bucket=bucket, Key=self._tmp)
            self._upload_id = str(started["UploadId"])
        number = len(self._parts) + 1
        part = await self._s3.upload_part(
            Bucket=bucket,
            Key=self._tmp,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=bytes(self._buffer),
        )
        self._parts.append({"PartNumber": number, "ETag": part["ETag"]})
        self._buffer.clear()

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= PART_BYTES:
            try:
                await self._flush()
            except Exception as exc:
                await self.abort()
                raise StorageError(f"S3 upload: {exc}") from exc

    async def commit(self, name: str | None = None) -> None:
        bucket = self._storage.bucket
        target = self._key if name is None else self._key.rsplit("/", 1)[0] + "/" + _plain(name)
        try:
            if self._upload_id is None:  # small: one request
                await self._s3.put_object(Bucket=bucket, Key=target, Body=bytes(self._buffer))
                return
            if self._buffer:
                await self._flush()
            await self._s3.complete_multipart_upload(
                Bucket=bucket,
                Key=self._tmp,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id = None
            if target != self._tmp:
                await self._s3.copy_object(
                    Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": self._tmp}
                )
                await self._s3.delete_object(Bucket=bucket, Key=self._tmp)
        except Exception as exc:
            await self.abort()
            raise StorageError(f"S3 commit: {exc}") from exc

    async def abort(self) -> None:
        self._buffer.clear()
        with contextlib.suppress(Exception):
            if self._upload_id is not None:
                await self._s3.abort_multipart_upload(
                    Bucket=self._storage.bucket, Key=self._tmp, UploadId=self._upload_id
                )
            self._upload_id = None
