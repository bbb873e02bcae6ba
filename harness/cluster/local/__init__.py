"""The ``local`` backend: a private RabbitMQ node and worker processes on this host.

Broker
    ``start_broker(None)`` starts a private node (``harness-<run_id>@localhost``)
    on free ports (AMQP, distribution, management and its own epmd), with its
    own data, log and cookie under ``<run_dir>/broker`` (or under
    ``/tmp/rmq-harness/nodes/`` when the run directory is not reachable by the
    ``rabbitmq`` user or its path is long). On stop the node's logs are copied to
    ``<run_dir>/logs/broker/`` and its data (mnesia) is removed.
    ``/usr/lib/rabbitmq/bin/rabbitmq-server``
    is run directly as the ``rabbitmq`` user (not through the Debian wrapper,
    which would ``su`` and share ``/var/lib/rabbitmq``'s cookie and logs).

    ``start_broker(endpoint)`` uses an existing broker (``--broker-url``, parsed
    by ``broker.parse_broker_url``; the runner narrows it to the run's scratch
    vhost first, see ``harness.scratch``).

Workers
    Each worker leads its own process group (``kill``/``pause`` act on the group)
    and gets SIGKILL if the harness dies (``PR_SET_PDEATHSIG``; all processes are
    forked by one long-lived spawner thread, since the signal follows the thread
    that forked). Its stdout/stderr go to ``<run_dir>/logs/<name>.log``; JSON event
    lines (or regex matches) are recorded in the history.

Nothing leaks: a state file per run lets ``procs.sweep_stale()`` (called by every
new LocalCluster) kill what a dead harness left behind.
"""

from harness.cluster.local.cluster import LocalCluster as LocalCluster
from harness.cluster.local.node import ENABLED_PLUGINS as ENABLED_PLUGINS
from harness.cluster.local.node import RABBITMQ_SERVER as RABBITMQ_SERVER
from harness.cluster.local.node import free_port as free_port
from harness.cluster.local.node import plugin_farm as plugin_farm
