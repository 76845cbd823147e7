"""S3 storage through boto3 (AWS, MinIO, moto): objects under one bucket and key prefix.

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config files, instance roles); the service has no
key settings of its own. Download URLs are SigV4 presigned ``GetObject`` URLs that set the download's
Content-Type and Content-Disposition, so clients fetch straight from S3 and the gateway carries no bytes.

Failures of the platform (endpoint unreachable, timeouts, missing or rejected credentials, missing bucket)
raise `InfraError`, which the worker retries and never bills; a missing key raises FileNotFoundError.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from ltx2trainer.errors import InfraError
from ltx2trainer.storage.base import (
    Storage,
    StoredObject,
    _check_expires_s,
    check_key,
    check_prefix,
    content_disposition,
)

PRESIGNED_URL_MAX_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}


class S3Storage(Storage):
    """Objects in `bucket` under `prefix` (e.g. ``prod/``); keys are relative to the prefix.

    `endpoint_url` points at an S3-compatible server (MinIO, moto); None means AWS. The timeouts are in
    seconds; `max_attempts` counts every try of a request, the first included (1 = no retries).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_attempts: int = 3,
    ) -> None:
        if not bucket:
            raise ValueError("S3Storage needs a bucket name")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = f"{check_key(prefix)}/" if prefix else ""
        self.endpoint_url = endpoint_url or None
        config = Config(
            region_name=region,
            signature_version="s3v4",
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            # Custom endpoints (MinIO, moto, an IP and port) rarely resolve bucket subdomains.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=region, config=config
        )
        # Workers reach the store at endpoint_url (e.g. http://minio:9000 inside a compose network) while
        # users download from where they can reach it: presigned URLs are signed for that public endpoint.
        public = public_endpoint_url or None
        self._presigner = self._client if public in (None, self.endpoint_url) else boto3.session.Session().client(
            "s3", endpoint_url=public, region_name=region, config=config
        )
        self._where = f"s3://{bucket}/{self.prefix}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def __repr__(self) -> str:
        return f"S3Storage({self._where!r})"

    def _full_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextmanager
    def _errors(self, doing: str, key: str) -> Iterator[None]:
        """Translate boto3's exceptions: a missing object to FileNotFoundError, the rest to InfraError."""
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _NOT_FOUND_CODES:
                raise FileNotFoundError(f"no stored object {key!r} in {self._where}") from exc
            detail = f"{code}: {error.get('Message', '')}".strip(": ") or str(exc)
            raise InfraError(f"S3 storage refused {doing} {key!r} in {self._where}: {detail}") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise InfraError(
                f"S3 storage has no usable credentials for {doing} {key!r} in {self._where} ({exc}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from exc
        except S3UploadFailedError as exc:
            raise InfraError(f"S3 storage failed {doing} {key!r} in {self._where}: {exc}") from exc
        except BotoCoreError as exc:  # connection refused, DNS, timeouts, closed connections
            raise InfraError(f"S3 storage unreachable while {doing} {key!r} in {self._where}: {exc}") from exc

    def put_file(self, key: str, path: Path, content_type: str) -> StoredObject:
        """Upload the file at `path` (multipart above 8 MiB, handled by boto3's transfer manager)."""
        full_key = self._full_key(key)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"cannot store {key!r}: {path} is not a file")
        size = path.stat().st_size
        with self._errors("writing", key):
            self._client.upload_file(str(path), self.bucket, full_key, ExtraArgs={"ContentType": content_type})
        return StoredObject(key=key, size=size, content_type=content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> StoredObject:
        full_key = self._full_key(key)
        with self._errors("writing", key):
            self._client.put_object(Bucket=self.bucket, Key=full_key, Body=data, ContentType=content_type)
        return StoredObject(key=key, size=len(data), content_type=content_type)

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        full_key = self._full_key(key)
        with self._errors("reading the size of", key):
            return int(self._client.head_object(Bucket=self.bucket, Key=full_key)["ContentLength"])

    def open(self, key: str) -> BinaryIO:
        """The object's streaming body (read it in chunks; close it when done).

        Errors while reading the stream itself come from botocore unwrapped.
        """
        full_key = self._full_key(key)
        with self._errors("reading", key):
            return self._client.get_object(Bucket=self.bucket, Key=full_key)["Body"]

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`, a page of at most 1000 keys per request."""
        full_prefix = self.prefix + check_prefix(prefix)
        deleted = 0
        with self._errors("deleting", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full_prefix)
            for page in pages:
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not objects:
                    continue
                answer = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise InfraError(
                        f"S3 storage could not delete {len(answer['Errors'])} objects under {prefix!r} in "
                        f"{self._where}, e.g. {first.get('Key')!r}: {first.get('Code')} {first.get('Message', '')}"
                    )
                deleted += len(objects)
        return deleted

    def url_for(self, key: str, *, file_name: str, content_type: str, expires_s: int, base_url: str = "") -> str:
        """A presigned GET URL valid for `expires_s` seconds (at most a week); `base_url` is not used.

        The URL makes S3 answer with `content_type` and an attachment Content-Disposition naming
        `file_name`. With temporary credentials the URL also dies when they expire.
        """
        full_key = self._full_key(key)
        expires_s = _check_expires_s(expires_s)
        if expires_s > PRESIGNED_URL_MAX_S:
            raise ValueError(f"S3 presigned URLs live at most {PRESIGNED_URL_MAX_S} s, asked for {expires_s} s")
        with self._errors("signing a URL for", key):
            return self._presigner.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": full_key,
                    "ResponseContentDisposition": content_disposition(file_name),
                    "ResponseContentType": content_type,
                },
                ExpiresIn=expires_s,
            )
