"""Publishes the work waiting for the worker pool as a CloudWatch metric, once a minute.

The pool's autoscaling group scales out on it (from zero) and back to zero when it stays at 0.
It reads the edge's GET /api/status (photos.pending: uploads waiting for their features) with the
API token from Secrets Manager, so it works while no worker runs.
"""

import json
import os
import urllib.request

import boto3

STATUS_URL = os.environ["STATUS_URL"]
TOKEN_SECRET_ARN = os.environ["TOKEN_SECRET_ARN"]
NAMESPACE = os.environ["METRIC_NAMESPACE"]
POOL = os.environ["POOL_NAME"]

_secrets = boto3.client("secretsmanager")
_cloudwatch = boto3.client("cloudwatch")
_token = None


def _api_token():
    global _token
    if _token is None:
        _token = _secrets.get_secret_value(SecretId=TOKEN_SECRET_ARN)["SecretString"].strip()
    return _token


def pending_work():
    request = urllib.request.Request(
        STATUS_URL,
        headers={"Authorization": f"Bearer {_api_token()}", "Accept": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        status = json.load(response)
    return int(status["photos"]["pending"])


def handler(event, context):
    pending = pending_work()
    _cloudwatch.put_metric_data(
        Namespace=NAMESPACE,
        MetricData=[
            {
                "MetricName": "PendingWork",
                "Dimensions": [{"Name": "Pool", "Value": POOL}],
                "Value": pending,
                "Unit": "Count",
            }
        ],
    )
    return {"pending": pending}
