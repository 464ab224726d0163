"""The artifact store on S3 or any S3-compatible server (MinIO, Ceph, moto), through boto3.

boto3 was chosen over s3fs and obstore after measuring them on a 300 MB download from a
local S3-compatible server (BENCHMARKS.md): boto3's streamed ``get_object`` took 0.7-1.0 s
at 50 MB peak RSS, obstore 0.85 s at 33 MB, s3fs 8.4 s at 102 MB. obstore was as fast and
lighter, but boto3 is the most widely deployed and maintained client for every
S3-compatible server, with multipart uploads built in; the memory difference is small
against a model's own size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from inferq.core.artifacts.store import ArtifactStore
from inferq.core.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from inferq.core.settings import ArtifactSettings


class S3Store(ArtifactStore):
    """Blobs as objects under ``s3://bucket/prefix``."""

    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @classmethod
    def from_uri(cls, uri: str, artifacts: ArtifactSettings) -> S3Store:
        """A store for ``s3://bucket[/prefix]``; credentials come from the usual AWS
        variables (``AWS_ACCESS_KEY_ID``…), the endpoint from ``INFERQ_S3_ENDPOINT_URL``."""
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError("an s3:// artifact store needs boto3 (pip install boto3)") from exc
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if not bucket:
            raise ConfigError(f"INFERQ_ARTIFACT_STORE: {uri!r} names no bucket")
        client = boto3.client(
            "s3",
            endpoint_url=artifacts.s3_endpoint_url or None,
            region_name=artifacts.s3_region or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )
        return cls(bucket, prefix, client)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def size(self, key: str) -> int | None:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(head["ContentLength"])

    def put_file(self, key: str, path: Path) -> None:
        # multipart above 8 MB, a few parts at a time: memory stays near parts x part size
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(multipart_chunksize=16 << 20, max_concurrency=4)
        self.client.upload_file(str(path), self.bucket, self._key(key), Config=config)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            raise ArtifactError(f"the artifact store has nothing at {self.uri_of(key)}") from exc
        return body  # a StreamingBody: read(n) and close(), as a file

    def copy(self, source: str, target: str) -> None:
        from boto3.s3.transfer import TransferConfig

        self.client.copy(
            {"Bucket": self.bucket, "Key": self._key(source)},
            self.bucket,
            self._key(target),
            Config=TransferConfig(multipart_chunksize=64 << 20),
        )

    def keys_under(self, prefix: str) -> list[str]:
        start = self._key(prefix).rstrip("/") + "/"
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=start
        ):
            for item in page.get("Contents", []):
                full = item["Key"]
                keys.append(full[len(self.prefix) + 1 :] if self.prefix else full)
        return sorted(keys)
