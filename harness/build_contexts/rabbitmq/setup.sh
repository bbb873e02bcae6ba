#!/bin/sh
# Runs once at image build time (as root). Two cases:
#  - public rabbitmq:3-management base: it has its own entrypoint and the
#    management plugin; add our settings as a conf.d drop-in.
#  - Debian base with the rabbitmq-server package: write the config, enable the
#    management plugin, and install an entrypoint that runs the server in the
#    foreground as the rabbitmq user.
set -eu
src=/tmp/harness-broker
install -d -m 0755 /etc/rabbitmq
install -m 0644 "$src/erl_inetrc" /etc/rabbitmq/erl_inetrc
if [ -x /usr/local/bin/docker-entrypoint.sh ]; then
    mkdir -p /etc/rabbitmq/conf.d
    cp "$src/rabbitmq.conf" /etc/rabbitmq/conf.d/90-harness.conf
    chmod 0644 /etc/rabbitmq/conf.d/90-harness.conf
    exit 0
fi
if ! [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
    echo "setup.sh: this base has neither the official RabbitMQ image's entrypoint nor Debian's rabbitmq-server package" >&2
    exit 1
fi
install -d -o rabbitmq -g rabbitmq -m 0755 /etc/rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
install -o rabbitmq -g rabbitmq -m 0644 "$src/rabbitmq.conf" /etc/rabbitmq/rabbitmq.conf
install -o rabbitmq -g rabbitmq -m 0644 "$src/enabled_plugins" /etc/rabbitmq/enabled_plugins
install -m 0755 "$src/docker-entrypoint-debian.sh" /usr/local/bin/docker-entrypoint.sh
# A shorter code path boots faster (see prune_plugins.py).
python3 "$src/prune_plugins.py" /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins /etc/rabbitmq/enabled_plugins
# Data from a package configuration step must not leak into every container.
rm -rf /var/lib/rabbitmq/mnesia /var/lib/rabbitmq/.erlang.cookie

