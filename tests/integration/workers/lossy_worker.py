"""A deliberately broken worker for tests: consumes with auto-ack and silently
drops every fifth task (no ``processed`` event, no side effect). The harness
must report ``no-loss`` false for it and exit 1.

It follows worker contract v1's environment and events otherwise.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import pika


def emit(event: str, **fields: object) -> None:
    fields.update(event=event, worker=os.environ.get("WORKER_ID", "lossy"), ts=time.time())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    params = pika.URLParameters(os.environ["RABBITMQ_URL"])
    queue = os.environ.get("RABBITMQ_QUEUE", "go.logger")
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(queue, durable=True,
                     arguments={"x-dead-letter-exchange": f"{queue}.dlx"})
    ch.exchange_declare(f"{queue}.dlx", "direct", durable=True)
    dlq = os.environ.get("RABBITMQ_DLQ", f"{queue}.dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, f"{queue}.dlx", routing_key=queue)
    emit("connected")
    seen = 0

    def on_message(_ch: object, method: object, props: pika.BasicProperties, body: bytes) -> None:
        nonlocal seen
        seen += 1
        if seen % 5 == 0:
            return  # the bug: auto-acked and dropped
        emit("processed", id=props.message_id, attempt=1, started_ts=time.time())

    ch.basic_consume(queue, on_message, auto_ack=True)
    emit("ready")
    with contextlib.suppress(KeyboardInterrupt):
        ch.start_consuming()


if __name__ == "__main__":
    main()
