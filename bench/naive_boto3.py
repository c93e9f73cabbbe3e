#!/usr/bin/env python3
"""The small boto3 script this project started from, as a benchmark peer: ONE list_objects_v2 call (so only
the first 1,000 keys), then a sequential get_object per key, each body read whole and written out. No
pagination, no concurrency, no verification, no incremental skip, no temp file, no fsync.

    naive_boto3.py BUCKET DEST      (endpoint and credentials from the environment: AWS_ENDPOINT_URL, ...)
"""
import os
import sys

import boto3

bucket, dest = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3")
for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
    path = os.path.join(dest, obj["Key"])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    with open(path, "wb") as f:
        f.write(body)
