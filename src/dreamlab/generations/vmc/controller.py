"""C: trained by CMA-ES, in the dream of V+M by default (the paper's method).

:func:`stage_controller` trains one C into a directory of the run (``controller/``,
``controller_vonly/``, an earlier round's ``rounds/R/controller/``, or any ``--name``). With
``evolve.restarts > 1`` whole CMA-ES runs are raced first (:func:`race_restarts`) and the winner
continues. Dreams begin at real situations (:func:`dream_start_bank`); with ``--pessimism`` the
dream is the run's ensemble of M with its disagreement penalty
(:func:`~dreamlab.generations.vmc.uncertainty.controller_world_model`).
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import torch

from dreamlab.checkpoint import has_model, read_config
from dreamlab.dream import dream_feature_stats
from dreamlab.generations.vmc.agent import VMCAgentFactory
from dreamlab.generations.vmc.config import RunConfig
from dreamlab.generations.vmc.precision import kept_precision
from dreamlab.generations.vmc.run import Run
from dreamlab.generations.vmc.uncertainty import controller_world_model
from dreamlab.generations.vmc.worldmodel import (
    VMWorldModel,
    memory_start_latents,
    start_latents_from_store,
)
from dreamlab.io import commit_files, read_json, settle
from dreamlab.models.controller import Controller, ControllerConfig
from dreamlab.progress import tqdm
from dreamlab.rundir import RunError, timed
from dreamlab.train.evaluators import EnvRollout, LocalEvaluator, child_threads
from dreamlab.train.evolve import (
    STATE_FILE,
    EvolveConfig,
    check_evolve_resume,
    evolve,
    make_evaluator,
)

__all__ = [
    "RESTARTS_FILE",
    "check_controller_resume",
    "dream_start_bank",
    "race_restarts",
    "stage_controller",
    "vonly_evolve",
]


def dream_start_bank(run: Run, world_model: VMWorldModel, round_: int | None = None) -> Any:
    """Where round ``round_``'s C dreams begin (``dream_starts``): rows of every real episode
    that round's M trained on (the collected ones, then what earlier rounds' C played)."""
    cfg = run.config
    banks = []
    for store in run.round_latents(round_):
        if cfg.dream_starts == "memory":
            banks.append(memory_start_latents(world_model, store))
        else:
            banks.append(start_latents_from_store(store, frames=cfg.dream_starts))
    return {key: torch.cat([bank[key] for bank in banks]) for key in banks[0]}


def vonly_evolve(cfg: RunConfig) -> EvolveConfig:
    """The V-only ablation's CMA-ES settings: the run's, or with ``vonly_generations`` one run of
    that many generations (no race: its dream score plateaus early for every seed)."""
    if cfg.vonly_generations is None:
        return cfg.evolve
    return dataclasses.replace(cfg.evolve, generations=cfg.vonly_generations, restarts=1)


def _controller_config(
    run: Run, world_model: VMWorldModel, inputs: Literal["zh", "z"]
) -> ControllerConfig:
    """C's architecture for the run's env and ``world_model``'s features."""
    cfg = run.config
    return ControllerConfig.from_action_space(
        world_model.feature_dim,
        run.action_space(),
        mapping=cfg.controller_mapping,
        hidden_size=cfg.controller_hidden,
        inputs=inputs,
    )


def stage_controller(
    run: Run,
    inputs: Literal["zh", "z"] = "zh",
    evolve_cfg: EvolveConfig | None = None,
    *,
    pessimism: float | None = None,
    name: str | None = None,
    round_: int | None = None,
    incumbent: str | None = None,
) -> Any:
    """Train C by CMA-ES (in the dream by default) into ``controller/`` (or ``controller_vonly/``).

    ``pessimism`` (lambda >= 0) trains in the dream of the run's ensemble of M with the reward
    ``r - lambda * disagreement`` (docs/uncertainty.md); ``name`` picks another directory. With
    ``evolve.restarts > 1`` the restarts are raced first (:func:`race_restarts`) and the winner
    continues to ``evolve.generations``. ``round_`` trains an earlier round's C of the
    iterative procedure, in that round's dream, into ``rounds/R/controller/``. ``incumbent``
    names a C found before (``RUN/<incumbent>``, the previous round's): the new C reads its input
    statistics, and it is kept unless a mean of this search scores better in this dream.
    """
    cfg = run.config
    ecfg = evolve_cfg or cfg.evolve
    if cfg.dream_starts not in ("first", "all", "memory"):
        raise RunError(f"dream_starts must be 'first', 'all' or 'memory', got {cfg.dream_starts!r}")
    last = round_ is None or round_ == cfg.iterations
    if not last and pessimism is not None:
        raise RunError("--pessimism trains the last round's C (the ensemble is of the last M)")
    if name is None:
        name = "controller" if inputs == "zh" else "controller_vonly"
        if not last:
            name = str((run.round_dir(round_) / name).relative_to(run.path))
    key = name if last else f"round{round_}_controller"
    rnd = None if last else round_

    def work() -> Any:
        seed = (
            race_restarts(run, inputs, ecfg, name, pessimism, rnd, incumbent)
            if ecfg.restarts > 1
            else None
        )
        final = ecfg if seed is None else dataclasses.replace(ecfg, seed=seed, restarts=1)
        return _evolve_controller(run, inputs, final, name, pessimism, rnd, incumbent)

    return timed(run.path, key, work)


RESTARTS_FILE = "restarts.json"
"""``RUN/NAME/restarts.json``: the raced restarts' scores and the seed that continued"""


def _chosen_seed(record: Path) -> int:
    """The seed that won the race recorded in ``RUN/NAME/restarts.json``."""
    data = read_json(record, "restarts")
    chosen = data.get("chosen_seed") if isinstance(data, dict) else None
    if not isinstance(chosen, int) or isinstance(chosen, bool):
        raise RunError(
            f"{record}: expected an object with an integer 'chosen_seed', got {chosen!r}; "
            f"delete {record.parent} to train this C again"
        )
    return chosen


def _restarts(name: str, ecfg: EvolveConfig) -> dict[int, tuple[EvolveConfig, str]]:
    """The raced restarts of ``RUN/name`` by seed: each one's settings and its directory under
    the run (``name/restarts/seed_S``)."""
    probe = dataclasses.replace(
        ecfg, generations=ecfg.restart_generations, restarts=1, progress=False, tensorboard=False
    )
    seeds = range(ecfg.seed, ecfg.seed + ecfg.restarts)
    return {s: (dataclasses.replace(probe, seed=s), f"{name}/restarts/seed_{s}") for s in seeds}


def check_controller_resume(run: Run, name: str, ecfg: EvolveConfig) -> None:
    """Raise unless the C in ``RUN/name`` (if any) can resume with ``ecfg``: a raced run
    continues with the seed that won, recorded beside it, and a race cut short resumes each
    restart; see :func:`~dreamlab.train.evolve.check_evolve_resume`."""
    out = run / name
    settle(out)  # a copy of the race's winner that a kill cut short
    record = out / RESTARTS_FILE
    if ecfg.restarts > 1 and record.exists():
        ecfg = dataclasses.replace(ecfg, seed=_chosen_seed(record), restarts=1)
    elif ecfg.restarts > 1:
        for settings, where in _restarts(name, ecfg).values():
            check_evolve_resume(run / where, settings)
    check_evolve_resume(out, ecfg)


def _restart_job(
    run_path: str,
    inputs: Literal["zh", "z"],
    ecfg: EvolveConfig,
    name: str,
    pessimism: float | None,
    round_: int | None = None,
    incumbent: str | None = None,
) -> float:
    """One raced restart: returns the best many-rollout score of its search's means (an
    incumbent C rides along in every restart, so it cannot rank them)."""
    run = Run.open(Path(run_path))
    result = _evolve_controller(run, inputs, ecfg, name, pessimism, round_, incumbent)
    means = [r["controller/eval/return"] for r in result.history if "controller/eval/return" in r]
    if not means:
        raise RunError(f"restart {name}: no evaluation of the mean ran")
    return float(max(means))


def race_restarts(
    run: Run,
    inputs: Literal["zh", "z"],
    ecfg: EvolveConfig,
    name: str,
    pessimism: float | None = None,
    round_: int | None = None,
    incumbent: str | None = None,
) -> int:
    """Race ``ecfg.restarts`` CMA-ES runs and seed ``run/name`` with the winner's state.

    Restart r (seed ``ecfg.seed + r``) runs ``restart_generations`` generations in
    ``run/name/restarts/seed_S/``; dream backends run them in parallel processes, one per CPU
    core (the batched dream does not get faster with more threads; on a machine whose cores
    share one physical core, as this project's 2-core one, processes do not help either;
    BENCHMARKS.md). The restart
    whose mean scored best on ``eval_rollouts`` episodes is copied into ``run/name/`` (its files and
    the record of the race as one unit of :func:`dreamlab.io.commit_files`, so the CMA-ES state's
    presence marks a finished copy), and its seed is returned: continuing with that seed resumes
    the winner exactly. Killed at any point, a rerun resumes each restart, or skips
    the race when the copy was finished.
    """
    out = run / name
    settle(out)  # a copy of the winner that a kill cut short
    record = out / RESTARTS_FILE
    if (out / STATE_FILE).exists():
        if not record.exists():
            raise RunError(
                f"{out} holds a CMA-ES state from a run without restarts; use another --name or "
                "remove the directory"
            )
        return _chosen_seed(record)
    jobs = _restarts(name, ecfg)  # seed -> (settings, directory), _restart_job's order
    seeds = list(jobs)
    workers = min(len(seeds), os.cpu_count() or 1) if ecfg.backend == "dream" else 1
    print(
        f"[dreamlab] racing {len(seeds)} CMA-ES restarts for {ecfg.restart_generations} generations "
        f"({workers} at a time)",
        flush=True,
    )
    scores: dict[int, float] = {}
    bar = tqdm(total=len(seeds), desc="restarts", unit="run", disable=not ecfg.progress)
    try:
        if workers == 1:
            for seed in seeds:
                scores[seed] = _restart_job(
                    str(run.path), inputs, *jobs[seed], pessimism, round_, incumbent
                )
                bar.update(1)
        else:
            # one torch thread per worker process: the processes share the cores
            with ProcessPoolExecutor(
                workers,
                mp_context=get_context("spawn"),
                initializer=torch.set_num_threads,
                initargs=(1,),
            ) as pool:
                with child_threads(1):  # the workers start at these submits
                    futures = {
                        seed: pool.submit(
                            _restart_job,
                            str(run.path),
                            inputs,
                            *jobs[seed],
                            pessimism,
                            round_,
                            incumbent,
                        )
                        for seed in seeds
                    }
                for seed, future in futures.items():
                    scores[seed] = future.result()
                    bar.update(1)
    finally:
        bar.close()
    chosen = max(seeds, key=lambda s: scores[s])
    for seed in seeds:
        mark = "  <- continues" if seed == chosen else ""
        print(f"[dreamlab]   seed {seed}: mean scores {scores[seed]:.3f} in the dream{mark}")
    winner = run / jobs[chosen][1]
    settle(winner)
    # one unit: the record of the race and the winner's files, its CMA-ES state among them
    with commit_files(out) as commit:
        for src in sorted(p for p in winner.iterdir() if p.is_file()):
            commit.write_bytes(out / src.name, src.read_bytes())
        commit.write_json(
            record,
            {
                "restart_generations": ecfg.restart_generations,
                "scores": {str(s): scores[s] for s in seeds},
                "chosen_seed": chosen,
            },
        )
    return chosen


def _evolve_controller(
    run: Run,
    inputs: Literal["zh", "z"],
    ecfg: EvolveConfig,
    name: str,
    pessimism: float | None,
    round_: int | None = None,
    incumbent: str | None = None,
) -> Any:
    """One CMA-ES run of C into ``RUN/name`` (resumes it): the dream, its start bank and C's
    input statistics are set up (or taken from the incumbent C at ``RUN/<incumbent>``, which the
    search must beat), then :func:`dreamlab.train.evolve.evolve` runs."""
    cfg = run.config
    if pessimism is not None:
        world_model = controller_world_model(run, inputs, pessimism)
    else:
        # Run loads V and M on the CPU; the dream runs on dream_device
        precision = kept_precision(run / name, cfg.dream_precision, cfg.dream_device)
        world_model = run.world_model(inputs, precision, round_).to(cfg.dream_device)
    ccfg = _controller_config(run, world_model, inputs)
    start = dream_start_bank(run, world_model, round_)
    held = run.controller(incumbent) if incumbent is not None else None
    if held is not None:
        if held.config.feature_dim != ccfg.feature_dim or held.config.inputs != inputs:
            raise RunError(
                f"{run / incumbent}: a C reading {held.config.feature_dim} {held.config.inputs} "
                f"features cannot compete with one reading {ccfg.feature_dim} {inputs}"
            )
        # its input statistics too, so its weights and the search's are the same parameters
        ccfg = held.config
    elif cfg.controller_normalize:
        saved = read_config(run / name)[1] if has_model(run / name) else None
        if saved is not None and saved.normalizes_inputs and saved.feature_dim == ccfg.feature_dim:
            # resuming: keep the statistics the saved CMA-ES state was searched under
            mean_list, std_list = saved.input_mean, saved.input_std
        else:
            mean, std = dream_feature_stats(
                world_model, start, run.action_space(), temperature=ecfg.temperature, seed=cfg.seed
            )
            mean_list, std_list = mean.tolist(), std.tolist()
        ccfg = dataclasses.replace(ccfg, input_mean=mean_list, input_std=std_list)
    torch.manual_seed(cfg.seed)
    controller = Controller(ccfg)
    rollout = EnvRollout(
        cfg.env,
        VMCAgentFactory(run / "vae", run.round_dir(round_) / "mdnrnn", ccfg),
        # the real check plays whole episodes even when training dreams are short
        max_episode_steps=ecfg.max_episode_steps if ecfg.backend != "dream" else None,
        env_kwargs=dict(cfg.env_kwargs),
    )
    backend = make_evaluator(
        ecfg, controller, world_model=world_model, start_latents=start, rollout=rollout
    )
    real: Any = None
    if ecfg.real_eval_every and ecfg.backend == "dream":
        if ecfg.real_eval_backend == "local":
            real = LocalEvaluator(rollout)
        else:
            real = make_evaluator(
                dataclasses.replace(ecfg, backend="processes"), controller, rollout=rollout
            )
    try:
        return evolve(
            controller,
            backend,
            ecfg,
            run / name,
            real_backend=real,
            incumbent=None if held is None else held.get_flat_params().double().numpy(),
        )
    finally:
        backend.close()
        if real is not None:
            real.close()
