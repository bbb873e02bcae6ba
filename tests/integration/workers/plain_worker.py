"""A brought worker for tests: correct (manual acks, prefetch, a dead-letter
exchange), but it ignores the harness's directives, serves no /healthcheck and
writes plain text lines, not contract v1 JSON events:

    consumed <id> ... done processing task <id>

The harness reads it with ``--events 'regex:done processing task (?P<id>\\S+)'``.
Like a real worker it reconnects when the connection drops (a broker restart),
for at most ``RECONNECT_ATTEMPTS_MAX`` attempts in a row.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

import pika

RECONNECT_ATTEMPTS_MAX = 240
RECONNECT_DELAY_S = 0.25


def consume(connected: list[bool]) -> None:
    params = pika.URLParameters(os.environ["RABBITMQ_URL"])
    queue = os.environ.get("RABBITMQ_QUEUE", "go.logger")
    dlq = os.environ.get("RABBITMQ_DLQ", f"{queue}.dlq")
    conn = pika.BlockingConnection(params)
    connected[0] = True
    ch = conn.channel()
    ch.exchange_declare(f"{queue}.dlx", "direct", durable=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_bind(dlq, f"{queue}.dlx", routing_key=queue)
    ch.queue_declare(queue, durable=True, arguments={"x-dead-letter-exchange": f"{queue}.dlx"})
    ch.basic_qos(prefetch_count=int(os.environ.get("WORKER_CONCURRENCY", "10")))

    def on_message(c: object, method: object, props: pika.BasicProperties, body: bytes) -> None:
        print(f"consumed {props.message_id}", flush=True)
        time.sleep(0.01)
        print(f"done processing task {props.message_id}", flush=True)
        ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

    ch.basic_consume(queue, on_message)
    print("plain worker consuming", file=sys.stderr, flush=True)
    ch.start_consuming()


def main() -> None:
    failures = 0  # in a row: a connection that came up resets the count
    while failures < RECONNECT_ATTEMPTS_MAX:
        connected = [False]
        try:
            with contextlib.suppress(KeyboardInterrupt):
                consume(connected)
            return
        except pika.exceptions.AMQPError as exc:
            failures = 1 if connected[0] else failures + 1
            print(f"connection lost ({type(exc).__name__}); reconnecting", file=sys.stderr,
                  flush=True)
            time.sleep(RECONNECT_DELAY_S)
    sys.exit(1)


if __name__ == "__main__":
    main()
