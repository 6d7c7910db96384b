"""The ``dreamlab`` command: one subcommand per stage, each a thin wrapper over a library function
that takes the same dataclass (so ``--help`` shows the dataclass's field docstrings).

Every subcommand ends the same way on bad input: one ``dreamlab: error: ...`` line naming the
file or setting at fault, no traceback, and a non-zero exit code (2 for a dreamlab error or an
unusable file, 3 for a diverged training, 130 for Ctrl-C). Saved files are written atomically, so
none is left half-written; running the same command again resumes.

A command that writes a run directory holds its lock (:mod:`dreamlab.lock`) while it works, so a
second writer stops with one line naming the first. ``--trust-env-code`` (anywhere on the line)
lets a run's ``config.json`` name an env whose module is then imported
(:mod:`dreamlab.envs.trust`); an env given with ``--env`` is trusted as it is typed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from dreamlab.bc.commands import TrainBCArgs, train_bc_cmd
from dreamlab.bc.compare import CompareArgs, run_compare
from dreamlab.commands import dream, evaluate, report, run_pipeline
from dreamlab.compare_models import CompareModelsArgs, compare_models
from dreamlab.data.collect import CollectConfig, collect
from dreamlab.data.video_io import VideoImportConfig, import_command
from dreamlab.envs.trust import trust_env_code
from dreamlab.futures_command import FuturesArgs, futures
from dreamlab.generations.args import DreamArgs, EvaluateArgs, PipelineConfig, ReportArgs
from dreamlab.generations.diffusion.pipeline import train_diffusion_cmd
from dreamlab.generations.diffusion.train import TrainDiffusionConfig
from dreamlab.generations.rssm.pipeline import TrainDreamerArgs, train_dreamer_cmd
from dreamlab.generations.tokens.train import TrainTokensArgs, train_tokens_cmd
from dreamlab.generations.vmc.commands import (
    EncodeArgs,
    TrainControllerArgs,
    TrainMDNRNNArgs,
    TrainVAEArgs,
    encode,
    train_controller,
    train_mdnrnn,
    train_vae,
)
from dreamlab.generations.vmc.uncertainty import (
    TrainEnsembleArgs,
    UncertaintyArgs,
    measure_uncertainty,
    train_ensemble_cmd,
)
from dreamlab.io import DreamlabError
from dreamlab.lock import run_lock
from dreamlab.play.export import ExportVideoArgs, export_video
from dreamlab.play.server import PlayArgs, play
from dreamlab.train.fit import TrainingDivergedError


@dataclass
class ExportMinariArgs:
    """Export an episode store as a Minari dataset (the Farama offline-RL standard)."""

    store: Path
    """episode store directory (e.g. runs/NAME/data)"""
    dataset_id: str
    """Minari dataset id, e.g. dreamlab/catch-random-v0"""
    path: Path | None = None
    """Minari datasets root (default: MINARI_DATASETS_PATH or ~/.minari/datasets)"""


@dataclass
class ImportMinariArgs:
    """Import a Minari dataset of pixel observations into an episode store."""

    dataset: str
    """Minari dataset id (local) or dataset directory"""
    out: Path
    """episode store directory to create or complete"""


def export_minari_cmd(args: ExportMinariArgs) -> Any:
    from dreamlab.data.minari_io import export_minari

    out = export_minari(args.store, args.dataset_id, args.path)
    print(f"exported {args.store} -> {out}")
    return out


def import_minari_cmd(args: ImportMinariArgs) -> Any:
    from dreamlab.data.minari_io import import_minari

    store = import_minari(args.dataset, args.out)
    print(f"imported {args.dataset} -> {args.out} ({len(store)} episodes)")
    return store


COMMANDS: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "pipeline": (PipelineConfig, run_pipeline),
    "collect": (CollectConfig, collect),
    "train-vae": (TrainVAEArgs, train_vae),
    "encode": (EncodeArgs, encode),
    "train-mdnrnn": (TrainMDNRNNArgs, train_mdnrnn),
    "train-controller": (TrainControllerArgs, train_controller),
    "evaluate": (EvaluateArgs, evaluate),
    "dream": (DreamArgs, dream),
    "report": (ReportArgs, report),
    "export-minari": (ExportMinariArgs, export_minari_cmd),
    "import-minari": (ImportMinariArgs, import_minari_cmd),
    "import": (VideoImportConfig, import_command),
    "export-video": (ExportVideoArgs, export_video),
    "play": (PlayArgs, play),
    "train-bc": (TrainBCArgs, train_bc_cmd),
    "compare": (CompareArgs, run_compare),
    "futures": (FuturesArgs, futures),
    "train-ensemble": (TrainEnsembleArgs, train_ensemble_cmd),
    "uncertainty": (UncertaintyArgs, measure_uncertainty),
    "train-dreamer": (TrainDreamerArgs, train_dreamer_cmd),
    "compare-models": (CompareModelsArgs, compare_models),
    "train-tokens": (TrainTokensArgs, train_tokens_cmd),
    "train-diffusion": (TrainDiffusionConfig, train_diffusion_cmd),
}


READ_ONLY = ("play", "export-minari", "export-video")
"""commands that write no run directory (export-video writes its own videos/ folder), so they
take no lock and may run beside a writer"""

TRUST_FLAG = "--trust-env-code"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dreamlab`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    trust = TRUST_FLAG in argv
    argv = [a for a in argv if a != TRUST_FLAG]
    try:
        args = tyro.extras.subcommand_cli_from_dict(
            {name: cls for name, (cls, _) in COMMANDS.items()},
            args=argv,
            prog="dreamlab",
            description=(
                "World models: learn a model of the world from pixels, act in its dream. "
                f"{TRUST_FLAG} (with any command): let a run's config.json name an env whose "
                "module is imported (runs its code)."
            ),
        )
    except (DreamlabError, ValueError) as e:  # a value the command's dataclass refused
        return _error(e, 2)
    name, fn = next((n, fn) for n, (cls, fn) in COMMANDS.items() if type(args) is cls)
    if trust:
        trust_env_code()
    env = getattr(args, "env", None)
    if isinstance(env, str):  # typed on this command line: the user's own
        trust_env_code(env)
    target = None if name in READ_ONLY else getattr(args, "run", None) or getattr(args, "out", None)
    try:
        with run_lock(target) if target is not None else nullcontext():
            fn(args)
    except TrainingDivergedError as e:
        # A NaN/inf loss or weight: one line; the last good checkpoint was kept.
        return _error(e, 3)
    except (DreamlabError, ValueError, OSError) as e:
        # Bad input (a missing or corrupt file, a run made otherwise, an unusable env) or a file
        # that cannot be written: one clear line, no traceback; nothing saved was half-written.
        return _error(e, 2)
    except KeyboardInterrupt:
        print("dreamlab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _error(e: BaseException, code: int) -> int:
    """Print ``e`` as one ``dreamlab: error:`` line on stderr and return the exit ``code``."""
    message = " ".join(line.strip() for line in str(e).splitlines()) or type(e).__name__
    print(f"dreamlab: error: {message}", file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
