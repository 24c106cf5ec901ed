"""Helpers of scripts/sam-local, run with the SAM CLI's own Python (its venv has boto3).

  template SRC DST [PREBUILT]   a copy of the template (SAM's built one, or template.yaml with
                                PREBUILT: each function's CodeUri set to PREBUILT/<Binary>,
                                its BuildMethod removed), with AWS_ENDPOINT_URL_SQS declared
                                so that the --env-vars file can set it (SAM passes only
                                declared variables to a function), and every function's
                                timeout SAM_LOCAL_TIMEOUT (120 s: qemu is slow)
  queues ENDPOINT NAME          create NAME-dlq and NAME as `ebra dev` does; print NAME's URL
  worker-event ENDPOINT QUEUE_URL TEMPLATE_EVENT OUT [CALL_ID]
                                receive the queue's next message (the one of CALL_ID when
                                given, up to 20 s) and write an SQS event carrying it, from
                                `sam local generate-event sqs receive-message`'s event;
                                print its receipt handle
  delete ENDPOINT QUEUE_URL RECEIPT_HANDLE
                                delete a handled message, as Lambda's event source mapping does
  webhook-event SECRET BODY OUT [forge]
                                a Function URL event (payload 2.0) POSTing BODY to
                                /callbacks/call-status, signed the Standard Webhooks way with
                                SECRET (with a wrong key when `forge` is given)
  fake-provider HOST PORT LOG   a provider of the generic contract: answers POST /api/v1/calls
                                with 202 {"callId": "sam-local-<n>"} and logs each request as
                                a JSON line
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def sqs(endpoint):
    import boto3

    return boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def template(src, dst, prebuilt=None):
    from samcli.yamlhelper import yaml_dump, yaml_parse

    with open(src, encoding="utf-8") as f:
        doc = yaml_parse(f.read())
    if prebuilt:
        # The bootstraps built already (one `cargo lambda build` for all): each function's
        # CodeUri is its directory PREBUILT/<Binary>, without the BuildMethod, so `sam local`
        # mounts it at /var/task as it would the output of `sam build`.
        for name, resource in doc.get("Resources", {}).items():
            if resource.get("Type") != "AWS::Serverless::Function":
                continue
            metadata = resource.pop("Metadata", {}) or {}
            if metadata.get("BuildMethod") != "rust-cargolambda":
                sys.exit(f"sam-local: {name} is not built by rust-cargolambda")
            binary = metadata["BuildProperties"]["Binary"]
            code = os.path.join(os.path.abspath(prebuilt), binary)
            if not os.path.isfile(os.path.join(code, "bootstrap")):
                sys.exit(f"sam-local: no {code}/bootstrap for {name}")
            resource["Properties"]["CodeUri"] = code
    variables = (
        doc.setdefault("Globals", {})
        .setdefault("Function", {})
        .setdefault("Environment", {})
        .setdefault("Variables", {})
    )
    variables.setdefault("AWS_ENDPOINT_URL_SQS", "")
    # Under qemu the arm64 code runs several times slower than on Graviton (a debug build
    # far slower still): give every function SAM_LOCAL_TIMEOUT seconds (default 120).
    timeout = int(os.environ.get("SAM_LOCAL_TIMEOUT") or 120)
    doc["Globals"]["Function"]["Timeout"] = timeout
    for resource in doc.get("Resources", {}).values():
        if resource.get("Type") == "AWS::Serverless::Function":
            resource.setdefault("Properties", {})["Timeout"] = timeout
    with open(dst, "w", encoding="utf-8") as f:
        f.write(yaml_dump(doc))


def queues(endpoint, name):
    client = sqs(endpoint)
    dlq = client.create_queue(
        QueueName=f"{name}-dlq", Attributes={"MessageRetentionPeriod": "1209600"}
    )["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    url = client.create_queue(
        QueueName=name,
        Attributes={
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": "10"}
            ),
            "VisibilityTimeout": "180",
            "MessageRetentionPeriod": "1209600",
        },
    )["QueueUrl"]
    print(url)


def worker_event(endpoint, queue_url, template_event, out, call_id=None):
    client = sqs(endpoint)
    deadline = time.time() + 20
    while time.time() < deadline:
        got = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=1,
            WaitTimeSeconds=2,
            VisibilityTimeout=180,
            AttributeNames=["All"],
        ).get("Messages", [])
        for message in got:
            if call_id and json.loads(message["Body"]).get("callId") != call_id:
                # Another call's message: leave it for its own worker.
                client.change_message_visibility(
                    QueueUrl=queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
                continue
            with open(template_event, encoding="utf-8") as f:
                event = json.load(f)
            record = event["Records"][0]
            arn = client.get_queue_attributes(
                QueueUrl=queue_url, AttributeNames=["QueueArn"]
            )["Attributes"]["QueueArn"]
            record.update(
                messageId=message["MessageId"],
                receiptHandle=message["ReceiptHandle"],
                body=message["Body"],
                md5OfBody=message["MD5OfBody"],
                eventSourceARN=arn,
                awsRegion="us-east-1",
            )
            record["attributes"].update(message.get("Attributes", {}))
            event["Records"] = [record]
            with open(out, "w", encoding="utf-8") as f:
                json.dump(event, f, indent=2)
            print(message["ReceiptHandle"])
            return
    what = f"call {call_id}'s message" if call_id else "a message"
    sys.exit(f"sam-local: no {what} arrived on {queue_url} within 20 s")


def delete(endpoint, queue_url, receipt_handle):
    sqs(endpoint).delete_message(QueueUrl=queue_url, ReceiptHandle=receipt_handle)


def webhook_event(secret, body, out, forge=False):
    key = base64.b64decode(secret.split()[0].removeprefix("whsec_"))
    if forge:
        key = hashlib.sha256(key).digest()
    msg_id, ts = f"msg_{uuid.uuid4().hex}", str(int(time.time()))
    signature = base64.b64encode(
        hmac.new(key, f"{msg_id}.{ts}.".encode() + body.encode(), hashlib.sha256).digest()
    ).decode()
    now = datetime.now(timezone.utc)
    path = "/callbacks/call-status"
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": "application/json",
            "host": "sam-local.lambda-url.us-east-1.on.aws",
            "user-agent": "scripts/sam-local",
            "webhook-id": msg_id,
            "webhook-timestamp": ts,
            "webhook-signature": f"v1,{signature}",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "sam-local",
            "domainName": "sam-local.lambda-url.us-east-1.on.aws",
            "domainPrefix": "sam-local",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "scripts/sam-local",
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": now.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(now.timestamp() * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }
    with open(out, "w", encoding="utf-8") as f:
        json.dump(event, f, indent=2)


def fake_provider(host, port, log):
    counter = {"n": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/api/v1/calls":
                self.send_response(404)
                self.end_headers()
                return
            counter["n"] += 1
            call_id = f"sam-local-{counter['n']}"
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
            with open(log, "a", encoding="utf-8") as f:
                f.write(
                    json.dumps(
                        {
                            "callId": call_id,
                            "idempotencyKey": self.headers.get("idempotency-key"),
                            "request": body,
                        }
                    )
                    + "\n"
                )
            answer = json.dumps({"callId": call_id}).encode()
            self.send_response(202)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


def main(argv):
    commands = {
        "template": template,
        "queues": queues,
        "worker-event": worker_event,
        "delete": delete,
        "webhook-event": lambda s, b, o, forge=None: webhook_event(s, b, o, forge == "forge"),
        "fake-provider": fake_provider,
    }
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    commands[argv[1]](*argv[2:])


if __name__ == "__main__":
    main(sys.argv)
