#!/bin/sh
# The example images' command: the framework's own CLI, as its documentation runs
# it, with the settings from the environment (each defaulting to the framework's
# own default, except the pool size the scenario gives as WORKER_CONCURRENCY).
# `exec`: the framework's main process is PID 1 and gets the container's signals.
set -eu
case "${EXAMPLE_APP:-}" in
celery)
    # CELERY_POOL: prefork (Celery's default) or threads; CELERY_LOG_LEVEL=info
    # writes the lines `harness run --events celery` reads.
    exec celery -A examples.celery_app.tasks worker --pool "${CELERY_POOL:-prefork}" \
        -Q "${RABBITMQ_QUEUE:?}" --without-gossip --without-mingle --without-heartbeat \
        -l "${CELERY_LOG_LEVEL:-warning}"
    ;;
dramatiq)
    # DRAMATIQ_VERBOSE=1 writes the debug lines `harness run --events dramatiq` reads.
    if [ -n "${DRAMATIQ_VERBOSE:-}" ]; then set -- --verbose; else set --; fi
    exec dramatiq examples.dramatiq_app.tasks --processes "${DRAMATIQ_PROCESSES:-1}" \
        --threads "${DRAMATIQ_THREADS:-4}" --queues "${RABBITMQ_QUEUE:?}" "$@"
    ;;
*)
    echo "container-cmd.sh: EXAMPLE_APP must be celery or dramatiq, not '${EXAMPLE_APP:-}'" >&2
    exit 2
    ;;
esac
