"""Credentials never leave a run: one registry of secrets and one redactor.

A broker URL given with ``--broker-url`` (or ``HARNESS_BROKER_URL``) carries a
password. Workers need it (through their environment, never a command line
that ``ps`` shows); nothing the harness writes or prints may carry it. Every
writer of an artefact (``result.json``, the history, audit and mutants
reports, captured logs) and the console pass text through :func:`redact`, and
a run ends with :func:`scrub_tree` over its directory as a safety net for the
files a backend wrote directly (a worker that prints its own configuration).

A secret is matched in the forms it travels in: as given, percent-encoded (a
URL), and base64 of ``user:password`` (an HTTP Basic header) or of the password
alone. Secrets shorter than ``MIN_SECRET_LEN`` are not registered: replacing
"a" everywhere would destroy every file and protect nothing (RabbitMQ's
default ``guest`` is no secret either).

Written by hand: no maintained library redacts a process's own outputs by a
registered value (log-filter packages match patterns, not values).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import urllib.parse
from pathlib import Path
from typing import Any, Final, TextIO

MASK: Final = "***"
MIN_SECRET_LEN: Final = 4
NOT_SECRET: Final = frozenset({"guest"})
# A run directory holds logs of a bounded run; a file above this is left alone
# and reported (reading gigabytes to scrub would hang the end of a run).
SCRUB_FILE_MAX_BYTES: Final = 256 * 1024 * 1024

_lock = threading.Lock()
_forms: tuple[str, ...] = ()


def forms_of(secret: str, user: str | None = None) -> set[str]:
    """The spellings of ``secret`` that an artefact could carry: as given,
    percent-encoded (the ways URLs do it), base64 (alone and as ``user:secret``,
    an HTTP Basic header), and each of those as JSON writes it (a ``"``, a
    backslash or a non-ASCII character is escaped in ``result.json``)."""
    out = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
           urllib.parse.quote(secret), urllib.parse.quote(secret, safe="!$&'()*+,;=")}
    out.add(base64.b64encode(secret.encode()).decode("ascii"))
    if user is not None:
        out.add(base64.b64encode(f"{user}:{secret}".encode()).decode("ascii"))
    for form in list(out):
        out.add(json.dumps(form)[1:-1])
        out.add(json.dumps(form, ensure_ascii=False)[1:-1])
    return {f for f in out if len(f) >= MIN_SECRET_LEN}


def register(secret: str | None, user: str | None = None) -> None:
    """Redact ``secret`` (and its encodings) from everything written from now on."""
    global _forms
    if not secret or len(secret) < MIN_SECRET_LEN or secret in NOT_SECRET:
        return
    with _lock:
        # Longest first: a form that contains another is replaced whole.
        _forms = tuple(sorted(set(_forms) | forms_of(secret, user), key=len, reverse=True))


def clear() -> None:
    """Forget every secret (tests)."""
    global _forms
    with _lock:
        _forms = ()


def active() -> bool:
    return bool(_forms)


# The userinfo of any AMQP URL, whatever encoder wrote it (a worker in another
# language prints its URL its own way).
_URL_USERINFO: Final = re.compile(r"(amqps?://[^:/@\s\"']*:)[^@\s\"']+@")
_URL_USERINFO_B: Final = re.compile(_URL_USERINFO.pattern.encode())


def redact(text: str) -> str:
    forms = _forms
    for f in forms:
        if f in text:
            text = text.replace(f, MASK)
    if forms and "amqp" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return text


def scrub_tree(root: Path) -> list[str]:
    """Rewrite every file under ``root`` that carries a secret; returns the
    problems (a file too large or unreadable), each one line without the secret."""
    forms = [f.encode() for f in _forms]
    if not forms or not root.is_dir():
        return []
    problems: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            try:
                if path.is_symlink() or path.stat().st_size > SCRUB_FILE_MAX_BYTES:
                    if not path.is_symlink():
                        problems.append(f"{path}: too large to scrub of credentials")
                    continue
                data = path.read_bytes()
                new = data
                for f in forms:
                    new = new.replace(f, MASK.encode())
                if b"amqp" in new:
                    new = _URL_USERINFO_B.sub(lambda m: m.group(1) + MASK.encode() + b"@", new)
                if new != data:
                    tmp = path.with_name(f".{name}.scrub")
                    tmp.write_bytes(new)
                    os.replace(tmp, path)
            except OSError as exc:
                problems.append(f"{path}: could not scrub of credentials ({exc.strerror})")
    return problems


class RedactingStream:
    """A text stream that redacts what is written through it (the console)."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        self._inner.write(redact(text) if _forms else text)
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._inner, "encoding", "utf-8")


def scrub_run_dir(run_dir: Path, console: Any) -> None:
    """The safety net after a run: no file of its directory keeps the broker's
    password (a worker may print its own configuration); what was scrubbed is said."""
    for problem in scrub_tree(run_dir):
        console.print(f"[yellow]{problem}[/yellow]")
