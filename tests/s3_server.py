"""An S3 API server on loopback for tests (moto's), with one empty bucket.

Ray Train reaches S3 through pyarrow's S3 filesystem, which takes its endpoint and keys from
the standard AWS variables: a job started with `environment()` in its environment (and Ray's
workers, which inherit the driver's) writes `s3://<bucket>/...` to this server instead of AWS.
"""

import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from tests.local_cluster import free_ports


@dataclass
class S3Bucket:
    name: str
    endpoint: str
    client: object  # a boto3 S3 client of the server

    def environment(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1"}

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()


@contextmanager
def s3_bucket():
    """A fresh bucket on a server of its own. moto keeps its buckets in the memory of the process,
    across servers: the name is new each time, so no test sees another's objects."""
    import boto3
    from moto.server import ThreadedMotoServer

    (port,) = free_ports(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1")
        name = f"ftedit-test-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        yield S3Bucket(name, endpoint, client)
    finally:
        server.stop()
