#!/bin/sh
# Entrypoint of the broker image on the Debian base: run RabbitMQ in the
# foreground, logging to stdout, as the rabbitmq user (never as root).
set -eu
if [ "${1:-}" = "rabbitmq-server" ]; then
    shift
    cd /var/lib/rabbitmq
    export HOME=/var/lib/rabbitmq
    if [ "$(id -u)" = "0" ]; then
        # Volumes mounted over the data directory may come in owned by root.
        chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
            /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
    fi
    exec /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
fi
exec "$@"
