"""boto3, as a user would run it, for the S3 tests: applies a list of
operations in order and prints each put's ETag.

    python3 s3_client.py http://127.0.0.1:9000 '[["create", "b"], ["put", "b", "k", "body"], ["delete", "b", "k"]]'
"""
import json
import sys

import boto3

endpoint, ops = sys.argv[1], json.loads(sys.argv[2])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="test-key", aws_secret_access_key="test-secret")
out = []
for op in ops:
    if op[0] == "create":
        s3.create_bucket(Bucket=op[1])
        out.append(None)
    elif op[0] == "put":
        out.append(s3.put_object(Bucket=op[1], Key=op[2], Body=op[3].encode())["ETag"].strip('"'))
    elif op[0] == "delete":
        s3.delete_object(Bucket=op[1], Key=op[2])
        out.append(None)
    else:
        sys.exit(f"unknown operation {op[0]!r}")
print(json.dumps(out))
