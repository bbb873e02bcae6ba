"""A chaos-verification harness for RabbitMQ task workers.

Roles, one module each (after Jepsen): ``cluster`` (backends), ``workload``
(the harness as a client), ``nemesis`` (faults), ``schedule`` (when faults
happen), ``history`` (the record), ``checkers`` (one per claim), ``scenario``
(YAML), ``report`` (table and result.json), ``runner`` (one run, start to
verdict), ``cli``.
"""

__version__ = "0.1.0"
