"""Shared test fixtures: every test runs deterministically, learning tests on a chosen seed.

Every test starts with the global RNGs (``random``, NumPy's legacy one, torch) seeded, one torch
thread (a reduction's result depends on how many threads split it) and
``torch.use_deterministic_algorithms(True)``: the same checkout on the same CPU gives the same
numbers every run.

Learning tests (``@pytest.mark.learning``) train a model and hold it to a threshold. They take
their seeds from the ``seed`` fixture (``$DREAMLAB_TEST_SEED``, default 0), the precision of
the dreams they train C in from ``dream_precision`` (``$DREAMLAB_TEST_DREAM_PRECISION``, default
float32), and compare through ``check``. ``benchmarks/seed_spread.py`` runs them over many seeds with
``$DREAMLAB_SPREAD_FILE`` set: ``check`` then records each value instead of failing, and the
script reports every threshold against the spread of its values (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import operator
import os
import random
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

SEED_ENV = "DREAMLAB_TEST_SEED"
PRECISION_ENV = "DREAMLAB_TEST_DREAM_PRECISION"
SPREAD_ENV = "DREAMLAB_SPREAD_FILE"
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _seed() -> int:
    raw = os.environ.get(SEED_ENV, "0")
    try:
        return int(raw)
    except ValueError:
        raise pytest.UsageError(f"${SEED_ENV} must be an integer, got {raw!r}") from None


@pytest.fixture(scope="session", autouse=True)
def _deterministic_session() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded_rngs() -> None:
    seed = _seed()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _no_env_code_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consent to import an env's module named by a file (dreamlab.envs.trust) lives in the
    environment; each test starts without it and gives it where it needs it."""
    from dreamlab.envs.trust import TRUST_ALL_ENV, TRUSTED_ENV

    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    monkeypatch.delenv(TRUST_ALL_ENV, raising=False)


@pytest.fixture(scope="session")
def seed() -> int:
    """Seed of the learning tests: ``$DREAMLAB_TEST_SEED`` (default 0)."""
    return _seed()


@pytest.fixture(scope="session")
def dream_precision() -> str:
    """Precision of the dreams learning tests train C in: ``$DREAMLAB_TEST_DREAM_PRECISION``
    (float32 by default; ``benchmarks/seed_spread.py --dream-precision bfloat16`` sweeps the
    other)."""
    value = os.environ.get(PRECISION_ENV, "float32")
    if value not in ("float32", "bfloat16"):
        raise pytest.UsageError(f"${PRECISION_ENV} must be float32 or bfloat16, got {value!r}")
    return value


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


Check = Callable[..., None]


@pytest.fixture
def check(request: pytest.FixtureRequest) -> Check:
    """``check(name, value, op, bound)`` asserts ``value op bound`` (op one of > >= < <=).

    With ``$DREAMLAB_SPREAD_FILE`` set it appends ``{test, name, seed, value, op, bound}`` to
    that JSON-lines file and does not fail, so a seed sweep sees every value.
    """
    spread = os.environ.get(SPREAD_ENV)

    def _check(name: str, value: float, op: str, bound: float, detail: object = "") -> None:
        value = float(value)
        ok = _OPS[op](value, bound)
        if spread:
            record = {
                "test": request.node.nodeid,
                "name": name,
                "seed": _seed(),
                "value": value,
                "op": op,
                "bound": bound,
                "ok": ok,
            }
            with open(spread, "a") as f:
                f.write(json.dumps(record) + "\n")
            return
        assert ok, f"{name}: {value:.6g} is not {op} {bound:.6g} {detail}"

    return _check
