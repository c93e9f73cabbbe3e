"""Sample images for the demo: small, real PNG files (a colour gradient each), uploaded with boto3.

    sample-images.py seed BUCKET N   create BUCKET and put N images under photos/YYYY/MM/
    sample-images.py change BUCKET   overwrite one image with same-size content, add one more
Endpoint and credentials come from the standard AWS environment variables.
"""
import struct
import sys
import zlib

import boto3


def png(width, height, seed):
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00"
        + b"".join(
            bytes(((x * 7 + seed * 37) % 256, (y * 5 + seed) % 256, (x + y + seed * 91) % 256))
            for x in range(width)
        )
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # Level 0: stored, so the size depends only on the dimensions (same-size overwrites are real).
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0)) + chunk(b"IEND", b"")


def main():
    s3 = boto3.client("s3")
    cmd, bucket = sys.argv[1], sys.argv[2]
    if cmd == "seed":
        n = int(sys.argv[3])
        s3.create_bucket(Bucket=bucket)
        # Versioning on, as the stack's bucket has it: the backup's time machine keeps every version.
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        s3.put_object(Bucket=bucket, Key="albums/", Body=b"")
        for i in range(n):
            key = f"photos/{2023 + i % 2}/{i % 12 + 1:02d}/img_{i:04d}.png"
            s3.put_object(Bucket=bucket, Key=key, Body=png(64, 48, i), ContentType="image/png")
        s3.put_object(Bucket=bucket, Key="albums/summer trip/beach & sun.png", Body=png(32, 32, 999))
        print(f"seeded {n + 1} images and 1 folder marker into s3://{bucket}")
    elif cmd == "change":
        s3.put_object(Bucket=bucket, Key="photos/2023/01/img_0000.png", Body=png(64, 48, 500))
        s3.put_object(Bucket=bucket, Key="photos/2025/06/new.png", Body=png(64, 48, 501))
        s3.put_object(Bucket=bucket, Key="photos/2024/02/img_0001.png", Body=png(64, 48, 502))
        s3.delete_object(Bucket=bucket, Key="photos/2024/02/img_0001.png")
        print("overwrote photos/2023/01/img_0000.png (same size), added photos/2025/06/new.png,")
        print("overwrote photos/2024/02/img_0001.png, then deleted it")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
