"""The state of a CMA-ES run on disk, without pickle, exactly resumable.

``cma`` normally pickles its ``CMAEvolutionStrategy``; here every numeric field of the strategy
and of its sampler / step-size / best-solution objects is written to one safetensors file (arrays;
numbers, lists and the sampling RNG state as JSON in its header). A killed run rebuilds a strategy
from the same options (:func:`new_strategy`) and restores those fields (:func:`load_cma_state`);
tests check that it then asks bit-identical candidates to a run that was never interrupted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cma
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from dreamlab.io import Commit, atomic_write_bytes

__all__ = ["SeededRandn", "is_diagonal", "load_cma_state", "new_strategy", "save_cma_state"]


class SeededRandn:
    """``randn(lam, N)`` for ``cma`` from a private PCG64 generator whose state we can save.

    ``cma``'s default draws from (and reseeds) numpy's global RNG, which cannot be checkpointed
    reliably when other code uses it too.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.Generator(np.random.PCG64(seed))

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


# Sub-objects of CMAEvolutionStrategy whose numeric fields make up the state that tell()/ask()
# read; everything else is either rebuilt identically from the options or a cache.
_STATE_PATHS = ("", "sm", "adapt_sigma", "best", "fit", "sigma_vec", "_stoptolxstagnation", "const")


def _resolve(obj: Any, path: str) -> Any:
    for part in path.split(".") if path else []:
        obj = getattr(obj, part)
    return obj


def _is_number(v: Any) -> bool:
    return isinstance(v, bool | int | float | np.integer | np.floating) or v is None


def _jsonable_number(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def new_strategy(
    x0: np.ndarray, sigma0: float, population_size: int, seed: int, *, diagonal: bool = False
) -> cma.CMAEvolutionStrategy:
    """A quiet CMA-ES strategy from mean ``x0`` whose samples come from :class:`SeededRandn`
    (``seed``); ``diagonal`` makes it separable CMA-ES."""
    randn = SeededRandn(seed)
    opts = {
        "popsize": population_size,
        "CMA_diagonal": bool(diagonal),
        "randn": randn,
        "seed": math.nan,  # the sampler is ours; keep cma away from numpy's global seed
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
        "verb_filenameprefix": "",
    }
    return cma.CMAEvolutionStrategy(x0, sigma0, opts)


def is_diagonal(es: cma.CMAEvolutionStrategy) -> bool:
    """Whether ``es`` is separable CMA-ES (diagonal covariance for its whole run)."""
    return es.opts["CMA_diagonal"] is True


def _strategy_randn(es: cma.CMAEvolutionStrategy) -> SeededRandn:
    randn = es.opts["randn"]
    if not isinstance(randn, SeededRandn):
        raise TypeError("CMA-ES strategy was not built by dreamlab (option 'randn' is not ours)")
    return randn


def save_cma_state(
    path: str | Path,
    es: cma.CMAEvolutionStrategy,
    *,
    extra_arrays: dict[str, np.ndarray] | None = None,
    extra_meta: dict[str, Any] | None = None,
    commit: Commit | None = None,
) -> None:
    """Write the full CMA-ES state (+ extras) to one safetensors file, atomically (or staged in
    ``commit``, a unit of :func:`dreamlab.io.commit_files`).

    Arrays go in as tensors (``cma.<path>.<field>``); numbers, numeric lists, array aliases,
    memory order and the sampler's RNG state go in the JSON header, so the one rename that
    publishes the file also publishes a consistent state.
    """
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    fortran: list[str] = []
    seen: dict[int, str] = {}
    for obj_path in _STATE_PATHS:
        obj = _resolve(es, obj_path)
        for name, value in vars(obj).items():
            key = f"{obj_path}.{name}" if obj_path else name
            if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
                if id(value) in seen:
                    # cma shares arrays between the strategy and its sampler (es.C is es.sm.C).
                    scalars[key] = {"alias": seen[id(value)]}
                    continue
                seen[id(value)] = key
                if value.ndim > 1 and value.flags.f_contiguous and not value.flags.c_contiguous:
                    # BLAS rounds differently on Fortran-ordered B; restoring the order keeps
                    # resumed samples bit-identical.
                    fortran.append(key)
                arrays[f"cma.{key}"] = np.ascontiguousarray(value)
            elif _is_number(value):
                scalars[key] = _jsonable_number(value)
            elif type(value) is list and all(isinstance(x, np.ndarray) for x in value):
                scalars[key] = {"arrays": len(value)}
                for i, x in enumerate(value):
                    arrays[f"cma.{key}#{i}"] = np.ascontiguousarray(x)
            elif type(value) is list and all(_is_number(x) for x in value):
                scalars[key] = {"list": [_jsonable_number(x) for x in value]}
            elif type(value) is dict and all(
                isinstance(k, str) and _is_number(x) for k, x in value.items()
            ):
                # e.g. the separable sampler's cached learning rates (sm._parameters)
                scalars[key] = {"dict": {k: _jsonable_number(x) for k, x in value.items()}}
    for name, value in (extra_arrays or {}).items():
        arrays[f"extra.{name}"] = np.ascontiguousarray(value)
    header = {
        "cma_version": cma.__version__,
        "scalars": scalars,
        "fortran": fortran,
        "rng": _strategy_randn(es).rng.bit_generator.state,
        "popsize": int(es.popsize),
        "diagonal": is_diagonal(es),
        "dim": int(es.N),
        "extra": extra_meta or {},
    }
    data = safetensors_bytes(arrays, metadata={"dreamlab_cma_state": json.dumps(header)})
    if commit is not None:
        commit.write_bytes(path, data)
    else:
        atomic_write_bytes(path, data)


def load_cma_state(
    path: str | Path,
) -> tuple[cma.CMAEvolutionStrategy, dict[str, np.ndarray], dict[str, Any]]:
    """Rebuild a strategy from :func:`save_cma_state`'s file.

    Returns:
        ``(strategy, extra arrays, extra meta)``.

    Raises:
        ValueError: the file is missing, corrupt, or not a dreamlab CMA-ES state.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"CMA-ES state not found: {path}")
    try:
        arrays = load_file(str(path))
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
        header = json.loads(metadata["dreamlab_cma_state"])
        scalars: dict[str, Any] = header["scalars"]
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt CMA-ES state ({e})") from None
    if header.get("cma_version") != cma.__version__:
        # Field names are cma internals; a different version may need more or fewer of them.
        import warnings

        warnings.warn(
            f"{path}: saved with cma {header.get('cma_version')}, running cma {cma.__version__}; "
            "the resumed run may not continue bit-exactly",
            stacklevel=2,
        )
    x0 = arrays["cma.x0"]
    es = new_strategy(
        x0,
        float(scalars.get("sigma0", 1.0)),
        int(header["popsize"]),
        0,
        diagonal=bool(header.get("diagonal", False)),
    )
    fortran = set(header.get("fortran", []))
    for full_key, value in arrays.items():
        if not full_key.startswith("cma.") or "#" in full_key:
            continue
        key = full_key[4:]
        obj_path, _, name = key.rpartition(".")
        setattr(
            _resolve(es, obj_path),
            name,
            np.asfortranarray(value) if key in fortran else value.copy(),
        )
    for key, value in scalars.items():
        obj_path, _, name = key.rpartition(".")
        target = _resolve(es, obj_path)
        if isinstance(value, dict) and "alias" in value:
            src_path, _, src_name = value["alias"].rpartition(".")
            setattr(target, name, getattr(_resolve(es, src_path), src_name))
        elif isinstance(value, dict) and "arrays" in value:
            setattr(target, name, [arrays[f"cma.{key}#{i}"].copy() for i in range(value["arrays"])])
        elif isinstance(value, dict) and "list" in value:
            setattr(target, name, list(value["list"]))
        elif isinstance(value, dict) and "dict" in value:
            setattr(target, name, dict(value["dict"]))
        else:
            setattr(target, name, value)
    if es.countiter > 0 and not hasattr(es, "timer"):
        # ask() only creates its timer on the first iteration.
        es.timer = cma.utilities.utils.ElapsedWCTime()
    _strategy_randn(es).rng.bit_generator.state = header["rng"]
    extra_arrays = {k[6:]: v for k, v in arrays.items() if k.startswith("extra.")}
    return es, extra_arrays, dict(header.get("extra", {}))
