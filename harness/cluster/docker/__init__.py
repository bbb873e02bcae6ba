"""The ``docker`` backend: a RabbitMQ container and N worker containers on a
private, internal Docker network.

Layout of one run ``<run_id>``:

- network ``rmq-harness-<run_id>`` (``internal=True``: nothing reaches outside),
  with a subnet fixed at creation so the broker keeps one static address across
  restarts; dynamic addresses come from the upper half of the subnet only;
- broker ``rmq-harness-<run_id>-rabbitmq`` (image ``rmq-harness/rabbitmq:latest``),
  alias and hostname ``rabbitmq``; the harness reaches it from the host at its
  address on the network (the host routes to a bridge's subnet, internal or not);
- workers ``rmq-harness-<run_id>-<name>`` with the worker contract v1 environment,
  alias ``<name>``, unprivileged (no added capability), PID 1 is the worker itself
  as in a Kubernetes pod (so a worker must handle SIGTERM itself);
- sidecars for iptables faults (see ``harness.netfault``).

Every object carries the labels ``rmq-harness=1``, ``rmq-harness.run=<run_id>``,
``rmq-harness.pid=<harness pid>``, ``rmq-harness.pidstart=<its start time>`` and
``rmq-harness.host=<hostname>``; ``sweep_stale`` removes the objects of runs whose
harness process is gone.

Shared broker (``SharedDockerBroker``): one network and one broker container for a
session ``shared-<hex>`` (same layout and labels as a run, plus
``rmq-harness.shared=<session>``), reused by several ``DockerCluster(shared=...)``
runs. Such a run creates no network and no broker: it gets a vhost named after its
run id (its endpoint and its workers' ``RABBITMQ_VHOST``/``RABBITMQ_URL`` point at
it), its workers and sidecars join the shared network (labels of the run, plus
``rmq-harness.shared``), and its ``stop`` removes only them and the vhost. The
shared objects carry the harness pid like any run, so ``sweep_stale`` leaves them
alone while that process lives. A broker restart from a run is refused while
another run uses the shared broker (it would be an unrecorded fault there).

External broker (``start_broker(endpoint)``, ``--broker-url``): no broker
container. The run's network stays internal; its workers reach the broker
through a relay in the harness process that listens on the host's address on
that network (``harness.relay``), with the user, password and vhost of the
endpoint (the runner's scratch vhost, ``harness.scratch``) in their
environment. A broker restart is refused: the broker is not the harness's.

The broker is started with the plain Docker SDK rather than testcontainers'
``RabbitMqContainer``: that class waits on a *published* port (internal networks
publish none), adds its own labels and session, and cannot give a static address
or a network alias at creation; the SDK is one dependency fewer on this path and
gives full control over stop/start of the same container.
"""

from harness.cluster.docker.cluster import DockerCluster as DockerCluster
from harness.cluster.docker.engine import AMQP_PORT as AMQP_PORT
from harness.cluster.docker.engine import BROKER_ALIAS as BROKER_ALIAS
from harness.cluster.docker.engine import BROKER_IMAGE as BROKER_IMAGE
from harness.cluster.docker.engine import LABEL as LABEL
from harness.cluster.docker.engine import LABEL_HOST as LABEL_HOST
from harness.cluster.docker.engine import LABEL_PID as LABEL_PID
from harness.cluster.docker.engine import LABEL_PIDSTART as LABEL_PIDSTART
from harness.cluster.docker.engine import LABEL_ROLE as LABEL_ROLE
from harness.cluster.docker.engine import LABEL_RUN as LABEL_RUN
from harness.cluster.docker.engine import LABEL_SHARED as LABEL_SHARED
from harness.cluster.docker.engine import MGMT_PORT as MGMT_PORT
from harness.cluster.docker.engine import WORKER_IMAGE as WORKER_IMAGE
from harness.cluster.docker.engine import connect as connect
from harness.cluster.docker.engine import engine_url as engine_url
from harness.cluster.docker.engine import parse_docker_ts as parse_docker_ts
from harness.cluster.docker.engine import require_image as require_image
from harness.cluster.docker.engine import sweep_stale as sweep_stale
from harness.cluster.docker.shared import SharedDockerBroker as SharedDockerBroker
