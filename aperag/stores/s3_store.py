"""Objects in S3 or an S3-compatible service (MinIO, Ceph)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from aperag.config import Settings
from aperag.stores import StoreUnavailable


class S3ObjectStore:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ObjectStore:
        client = boto3.client(
            "s3",
            endpoint_url=settings.object_store_s3_endpoint or None,
            region_name=settings.object_store_s3_region or None,
            aws_access_key_id=settings.object_store_s3_access_key or None,
            aws_secret_access_key=settings.object_store_s3_secret_key or None,
            config=Config(
                s3={"addressing_style": "path" if settings.object_store_s3_use_path_style else "auto"}
            ),
        )
        return cls(client, settings.object_store_s3_bucket, settings.object_store_s3_prefix_path)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"s3: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"s3: {exc}") from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"s3: {exc}") from exc

    def ping(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(f"s3: {exc}") from exc
