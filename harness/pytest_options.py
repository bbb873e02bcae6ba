"""The pytest plugin's options (``--harness-*`` and their ini names) and the run
options built from them; ``harness.pytest_plugin`` registers ``pytest_addoption``
from here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import pytest

from harness import credentials, vocab
from harness.options import (
    BROKER_URL_ENV,
    OptionsError,
    RunOptions,
    build_options,
    parse_capabilities,
    parse_gate,
    parse_worker_env,
)

UNKNOWN_MODES: Final = ("error", "skip")

# (option, ini name, help, default)
_OPTIONS: Final = (
    ("backend", "auto, local, docker or swarm (default auto: docker when an engine answers "
                "and the images exist)", "auto"),
    ("worker-image", "image of a brought worker (docker or swarm backend)", None),
    ("worker-cmd", "command of a brought worker (local backend)", None),
    ("capabilities", "what the worker can do: directives, health, or none "
                     "(default: both for the reference worker, none for a brought one)", None),
    ("gate", "comma-separated claims whose invariant gates the items (default: every "
             "judged claim the worker's events can show)", None),
    ("out", "where run directories go (default runs)", "runs"),
    ("events", "'json' (worker contract v1), 'regex:PATTERN' with a group 'id', or a "
               "framework's log preset: celery or dramatiq", "json"),
    ("reporting", "the reference worker's reporting: full or minimal", "full"),
    ("worker-env", "more environment for every worker: NAME=VALUE, space-separated "
                   "(e.g. CELERY_ACKS_LATE=true)", None),
    ("format", "the tasks' wire format: contract-v1 (default), celery or dramatiq, "
               "published by the framework's own client (docs/frameworks.md)", None),
    ("broker-url", f"a broker of yours (default ${BROKER_URL_ENV}); each run gets a "
                   "scratch vhost there", None),
    ("unknown", "what an undecided claim is: error (default) or skip", "error"),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "chaos-verification harness (rmq-chaos-harness)")
    group.addoption("--harness-scenarios", action="append", default=[], metavar="PATH",
                    help="collect these scenario files (a directory, a file, or 'suite' "
                         "for the packaged suite) as test items, one per claim (repeatable)")
    parser.addini("harness_scenarios", type="paths", default=[],
                  help="scenario directories or files, collected when pytest runs "
                       "without path arguments (like testpaths)")
    for name, help_text, _default in _OPTIONS:
        group.addoption(f"--harness-{name}", dest=f"harness_{name.replace('-', '_')}",
                        default=None, help=help_text)
        parser.addini(f"harness_{name.replace('-', '_')}", help=help_text, default=None)
    group.addoption("--harness-seed", dest="harness_seed", default=None, type=int,
                    help="seed of every run (default: a new one per run, printed)")


def setting(config: pytest.Config, name: str) -> str | None:
    """A setting from the command line, else the ini file, else its default."""
    key = f"harness_{name.replace('-', '_')}"
    value = config.getoption(key)
    if value is None:
        ini = config.getini(key)
        value = ini if ini not in (None, "") else None
    if value is None:
        value = next(d for n, _h, d in _OPTIONS if n == name)
    return None if value is None else str(value)


# --------------------------------------------------------------------------- session


def options_from(config: pytest.Config) -> RunOptions:
    """The session's RunOptions; ``pytest.UsageError`` (one line) when one is wrong."""
    try:
        gate_text = setting(config, "gate")
        caps_text = setting(config, "capabilities")
        opts = build_options(
            backend=setting(config, "backend") or "auto",
            broker_url=setting(config, "broker-url") or os.environ.get(BROKER_URL_ENV) or None,
            seed=config.getoption("harness_seed"),
            out=Path(setting(config, "out") or "runs"),
            worker_cmd=setting(config, "worker-cmd"),
            worker_image=setting(config, "worker-image"),
            events=setting(config, "events") or "json",
            gate=parse_gate(gate_text) if gate_text else None,
            capabilities=parse_capabilities(caps_text) if caps_text else None,
            progress=False,
            reporting=setting(config, "reporting") or "full",
            task_format=setting(config, "format") or vocab.FORMAT_CONTRACT_V1,
            worker_env=parse_worker_env(tuple((setting(config, "worker-env") or "").split())),
        )
    except OptionsError as exc:
        raise pytest.UsageError(f"harness: {credentials.redact(str(exc))}") from None
    if opts.reporting not in vocab.REPORTING_MODES:
        raise pytest.UsageError(f"harness: --harness-reporting {opts.reporting!r}: use "
                                f"{' or '.join(vocab.REPORTING_MODES)}")
    return opts


def unknown_mode(config: pytest.Config) -> str:
    mode = setting(config, "unknown") or "error"
    if mode not in UNKNOWN_MODES:
        raise pytest.UsageError(f"harness: --harness-unknown {mode!r}: use error or skip")
    return mode


