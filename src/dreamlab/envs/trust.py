"""Consent before a file makes dreamlab import code.

An env spec ``pkg.module:Class`` (or Gymnasium's ``module:EnvId``) imports ``pkg.module`` when
the env is made, which runs that module's code. The user typing it (``--env``, ``make_env``) is
consent. A spec read from a file someone else may have written (a run's ``config.json``, an
episode store's metadata) is not: :func:`check_env_trusted` refuses it unless the user gave the
same spec again, passed ``--trust-env-code``, set ``DREAMLAB_TRUST_ENV_CODE=1``, or called
:func:`trust_env_code`. The consent is kept in this process and in the environment variable
:data:`TRUSTED_ENV`, so worker processes it starts inherit it.
"""

from __future__ import annotations

import os

from dreamlab.envs.wrappers import EnvSpecError

__all__ = [
    "TRUSTED_ENV",
    "TRUST_ALL_ENV",
    "EnvTrustError",
    "check_env_trusted",
    "imports_code",
    "trust_env_code",
]

TRUST_ALL_ENV = "DREAMLAB_TRUST_ENV_CODE"
"""set to 1: every env spec read from a file may import its module"""
TRUSTED_ENV = "DREAMLAB_TRUSTED_ENVS"
"""the specs consented to in this process (and its children), separated by newlines"""


class EnvTrustError(EnvSpecError):
    """A file names an env whose making would import (run) code the user did not consent to."""


def imports_code(spec: str) -> bool:
    """Whether making env ``spec`` imports a module named by the spec itself."""
    return ":" in spec


def _trusted() -> set[str]:
    return set(filter(None, os.environ.get(TRUSTED_ENV, "").split("\n")))


def trust_env_code(spec: str | None = None) -> None:
    """Consent to importing the module of env ``spec`` (``None``: of every spec) when a file
    names it, in this process and the processes it starts."""
    if spec is None:
        os.environ[TRUST_ALL_ENV] = "1"
    elif imports_code(spec):
        os.environ[TRUSTED_ENV] = "\n".join(sorted(_trusted() | {spec}))


def check_env_trusted(spec: str, source: str) -> None:
    """Raise unless env ``spec``, read from ``source``, may be made (see the module docstring).

    Raises:
        EnvTrustError: naming ``source``, the module, and how to consent.
    """
    if not imports_code(spec) or os.environ.get(TRUST_ALL_ENV) == "1" or spec in _trusted():
        return
    module = spec.partition(":")[0]
    raise EnvTrustError(
        f"{source} names env {spec!r}: making it imports module {module!r}, which runs its "
        "code, and a file does not get to run code on its own: give the env again on the "
        f"command line (--env {spec}), or pass --trust-env-code (DREAMLAB_TRUST_ENV_CODE=1) if "
        "you trust whoever wrote this file"
    )
