"""The DoomTakeCover reproduction (BENCHMARKS.md, "DoomTakeCover"), resumable end to end.

1. ``dreamlab pipeline --preset doom-takecover --run RUN``: collect, V, M, C in the dream at
   tau 1.0, 100 real episodes of C and of random play, the dream's checks, the report.
2. The paper's temperature table on the same V and M: C trained in the dream at each other
   ``--taus`` value into ``RUN/controller_tauT`` (the run's CMA-ES settings,
   ``--table-generations`` generations), scored over the same real episodes. ``report.md`` then
   holds the table.
3. With ``--seeds S ...``: the same C's (the run's tau and each ``--taus``) again from other CMA-ES
   seeds, into ``RUN/controller_seedS`` and ``RUN/controller_tauT_seedS``: what one CMA-ES run's
   real score is worth. ``report.md`` gives each tau's spread over its seeds.

Run it again after a kill and it continues where it stopped (every stage resumes). Prints the
scores, the table and the wall time of each stage::

    python benchmarks/doom_takecover.py --run /work/runs/doom
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from dreamlab.generations.args import PipelineConfig
from dreamlab.generations.vmc.controller import stage_controller
from dreamlab.generations.vmc.evaluate import stage_evaluate
from dreamlab.generations.vmc.pipeline import run_pipeline
from dreamlab.generations.vmc.report import temperature_rows, write_report
from dreamlab.io import read_json
from dreamlab.rundir import timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory")
    parser.add_argument("--preset", default="doom-takecover")
    parser.add_argument("--taus", type=float, nargs="*", default=[0.1, 1.15, 1.3])
    parser.add_argument(
        "--table-generations",
        type=int,
        default=None,
        help="CMA-ES generations of each table C (default: the preset's)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[],
        help="other CMA-ES seeds of the run's C and of each table C",
    )
    args = parser.parse_args()

    run = run_pipeline(PipelineConfig(run=args.run, preset=args.preset))
    cfg = run.config
    evals = read_json(run / "eval.json", "eval")["agents"]
    jobs = [(tau, None) for tau in args.taus if tau != cfg.evolve.temperature]
    jobs += [(tau, seed) for tau in [cfg.evolve.temperature, *args.taus] for seed in args.seeds]
    for tau, seed in jobs:
        name = "controller"
        if tau != cfg.evolve.temperature:
            name += f"_tau{tau:g}"
        if seed is not None:
            name += f"_seed{seed}"
        ecfg = dataclasses.replace(
            cfg.evolve,
            temperature=tau,
            seed=cfg.evolve.seed if seed is None else seed,
            generations=args.table_generations or cfg.evolve.generations,
            real_eval_every=0,
        )
        print(f"[doom] C at tau {tau:g}, CMA-ES seed {ecfg.seed} -> {run / name}", flush=True)
        stage_controller(run, evolve_cfg=ecfg, name=name)
        if evals.get(name, {}).get("episodes") != cfg.eval_episodes:
            evals = stage_evaluate(run, agents=[name])["agents"]
    write_report(run)

    summary = {
        agent: f"{a['mean_return']:.0f} ± {a['std_return']:.0f} over {a['episodes']}"
        for agent, a in evals.items()
    }
    print(json.dumps(summary, indent=1))
    rows = temperature_rows(Path(run.path), cfg.evolve.temperature)
    print("| tau | controller | score in its dream | score in reality |")
    print("|---|---|---|---|")
    for tau, name, dream, real in rows:
        print(f"| {tau:g} | `{name}` | {dream:.0f} | {real:.0f} |")
    print("| stage | seconds |")
    print("|---|---|")
    for stage, seconds in timings(run.path).items():
        print(f"| {stage} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
