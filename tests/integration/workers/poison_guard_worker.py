"""A brought worker with a realistic bug, written the way a team might: it keeps
worker contract v1's minimum (``received`` and ``processed``, no ``acked``),
acks manually, and has a "poison guard": every delivery that comes back with
``redelivered=true`` "must have crashed a pod", so it goes to the DLQ
unprocessed. After a kill, the killed worker's tasks are dead-lettered instead
of done. Its structured logger also prints lines with an ``event`` key that are
not contract events (``health``, ``fault``): the harness must ignore them.

Serial (one task at a time, prefetch 10), like ``amqp-consume``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import pika


def emit(event: str, **fields: object) -> None:
    fields.update(event=event, worker=os.environ.get("WORKER_ID", "guard"), ts=time.time())
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def main() -> None:
    params = pika.URLParameters(os.environ["RABBITMQ_URL"])
    queue = os.environ.get("RABBITMQ_QUEUE", "go.logger")
    dlq = os.environ.get("RABBITMQ_DLQ", f"{queue}.dlq")
    tries = 60  # the broker may still be booting
    for _ in range(tries):
        try:
            conn = pika.BlockingConnection(params)
            break
        except pika.exceptions.AMQPConnectionError:
            time.sleep(0.5)
    else:
        sys.exit(f"guard: no broker after {tries} tries")
    ch = conn.channel()
    ch.exchange_declare(f"{queue}.dlx", "direct", durable=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, f"{queue}.dlx", routing_key=queue)
    ch.queue_declare(queue, durable=True,
                     arguments={"x-dead-letter-exchange": f"{queue}.dlx"})
    ch.basic_qos(prefetch_count=10)
    # A structured logger's lines: an "event" key, but not contract events.
    emit("health", ok=True, status=200)
    emit("fault", fault="kill", target="worker-9", ok=True)

    def on_message(c: pika.adapters.blocking_connection.BlockingChannel, method: object,
                   props: pika.BasicProperties, body: bytes) -> None:
        tag = method.delivery_tag  # type: ignore[attr-defined]
        redelivered = bool(method.redelivered)  # type: ignore[attr-defined]
        emit("received", id=props.message_id, redelivered=redelivered)
        if redelivered:
            c.basic_nack(tag, requeue=False)  # the bug: the poison guard
            return
        try:
            sleep_ms = float(json.loads(body).get("directives", {}).get("sleep_ms", 0))
        except (ValueError, AttributeError):
            c.basic_nack(tag, requeue=False)
            return
        started = time.time()
        time.sleep(min(sleep_ms, 5000) / 1000.0)
        emit("processed", id=props.message_id, attempt=1, started_ts=started)
        c.basic_ack(tag)

    ch.basic_consume(queue, on_message)
    with contextlib.suppress(KeyboardInterrupt):
        ch.start_consuming()


if __name__ == "__main__":
    main()
