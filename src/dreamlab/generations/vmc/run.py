"""A V/M/C run directory (:class:`Run`): its settings and what its stages saved.

``runs/NAME/`` holds everything one experiment made::

    config.json          {"kind": "vmc", "config": RunConfig} (every stage's settings)
    timings.json         wall seconds per stage, summed over resumes
    data/                real episodes (episode store)
    vae/                 V: config.json, model.safetensors, optimizer state, metrics, curves.png,
                         reconstructions.png
    latents/             every episode encoded by V (mu, logvar per frame)
    mdnrnn/              M: same files as vae/
    controller/          C trained in the dream (CMA-ES state, best/mean weights, metrics)
    controller_vonly/    the V-only ablation (C sees z but not M's memory h)
    rounds/R/            with ``iterations`` (the paper's iterative procedure), round R's M and
                         C, and the real episodes that C played (data/, latents/); the last
                         round's M and C are mdnrnn/ and controller/ above
    mdnrnn_ensemble/     an ensemble of M (``dreamlab train-ensemble``, docs/uncertainty.md)
    eval.json            real-env scores of every agent
    dream_vs_real.mp4    real | imagined, open loop; prediction_error.png
    report.md            the summary a person reads

Run directories written before ``config.json`` recorded a kind hold ``RunConfig``'s fields at the
top level; they open as they are (:func:`dreamlab.rundir.read_run_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from dreamlab.checkpoint import has_model, load_model, read_config
from dreamlab.data.store import EpisodeStore
from dreamlab.envs import make_env
from dreamlab.generations.vmc.config import KIND, RunConfig, get_run_preset
from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.models.controller import Controller
from dreamlab.models.mdnrnn import MDNRNN
from dreamlab.models.vae import VAE, VAEConfig
from dreamlab.rundir import (
    CONFIG_FILE,
    RunError,
    read_run_config,
    read_run_config_of,
    run_action_space,
    write_run_config,
)

__all__ = ["DEFAULT_PRESET", "Run"]

DEFAULT_PRESET = "catch"
"""the preset of a new run made without one (the demo)"""


class Run:
    """A run directory and its resolved config."""

    def __init__(self, path: str | Path, config: RunConfig) -> None:
        self.path = Path(path)
        self.config = config
        self._action_space: Any = None

    @classmethod
    def open(cls, path: str | Path, preset: str | None = None) -> Run:
        """Open ``path``; create it from ``preset`` if it has no config yet.

        A run that exists keeps its own config: a different ``preset`` is an error, so that one
        directory never mixes two experiments.

        Raises:
            RunError: another generation's run, another preset's, or no run and no preset.
        """
        root = Path(path)
        data = read_run_config_of(root, KIND, "V/M/C")
        if data is not None:
            config = RunConfig.from_json(data, str(root / CONFIG_FILE))
            if preset is not None and preset != config.preset:
                raise RunError(
                    f"{root} was made with preset {config.preset!r}, not {preset!r}; use another "
                    "--run directory"
                )
            return cls(root, config)
        if preset is None:
            raise RunError(f"{root}: no config.json; start it with --preset NAME")
        run = cls(root, get_run_preset(preset))
        run.save_config()
        return run

    @classmethod
    def open_or_create(cls, path: str | Path, preset: str | None = None) -> Run:
        """:meth:`open`, where a new run without a ``preset`` gets :data:`DEFAULT_PRESET`."""
        if preset is None and read_run_config(path) is None:
            preset = DEFAULT_PRESET
        return cls.open(path, preset)

    def save_config(self) -> None:
        """Write ``config.json`` (atomically) from :attr:`config`."""
        write_run_config(self.path, KIND, self.config.to_json())

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    # --------------------------------------------------------------- loaders
    def data(self) -> EpisodeStore:
        """The real episodes (``data/``)."""
        if not (self.path / "data" / "store.json").exists():
            raise RunError(f"{self.path}: no episodes yet; run `dreamlab collect` first")
        return EpisodeStore.open(self.path / "data")

    def latents(self) -> EpisodeStore:
        """The episodes encoded by V (``latents/``)."""
        if not (self.path / "latents" / "store.json").exists():
            raise RunError(f"{self.path}: no latents yet; run `dreamlab encode` first")
        return EpisodeStore.open(self.path / "latents")

    def model_dir(self, name: str, what: str, command: str) -> Path:
        """``RUN/name`` if it holds a checkpoint, else a clear error naming the stage to run."""
        if not has_model(self.path / name):
            raise RunError(f"{self.path}: no {what}; run `dreamlab {command}` first")
        return self.path / name

    def vae(self) -> VAE:
        """V, on the CPU."""
        return load_model(self.model_dir("vae", "trained V", "train-vae"))

    def vae_config(self) -> VAEConfig:
        """V's config without loading its weights."""
        return read_config(self.model_dir("vae", "trained V", "train-vae"))[1]

    def round_dir(self, round_: int | None = None) -> Path:
        """Where round ``round_`` of the iterative procedure keeps its M, its C and the real
        episodes that C played: ``rounds/R/``. The last round (``None``, or ``iterations``) is
        the run directory itself, so a run without iterations has only that one."""
        last = self.config.iterations
        if round_ is None or round_ == last:
            return self.path
        if not 0 <= round_ < last:
            raise RunError(f"{self.path}: round {round_} outside 0..{last} (iterations={last})")
        return self.path / "rounds" / str(round_)

    def round_latents(self, round_: int | None = None) -> list[EpisodeStore]:
        """The real data of round ``round_``'s M and dream starts: ``latents/`` (the collected
        episodes), then the episodes each earlier round's C played."""
        last = self.config.iterations if round_ is None else round_
        stores = [self.latents()]
        for r in range(last):
            path = self.round_dir(r) / "latents"
            if not (path / "store.json").exists():
                raise RunError(
                    f"{self.path}: round {r}'s C has not played yet (no {path}); run "
                    "`dreamlab pipeline` (its iterate stage)"
                )
            stores.append(EpisodeStore.open(path))
        return stores

    def mdnrnn(self, round_: int | None = None) -> MDNRNN:
        """M of round ``round_`` (default: the last, ``mdnrnn/``), on the CPU."""
        rel = (self.round_dir(round_) / "mdnrnn").relative_to(self.path)
        iterated = round_ is None and self.config.iterations > 0
        command = "pipeline --until iterate" if iterated else "train-mdnrnn"
        return load_model(self.model_dir(str(rel), "trained M", command))

    def controller(self, name: str = "controller") -> Controller:
        """The C saved in ``RUN/name``."""
        return load_model(self.model_dir(name, name, "train-controller"), Controller)

    def action_space(self) -> Any:
        """The env's action space, as the episode store recorded it. Only a run with no
        episodes yet makes the env (a VizDoom or Box2D process for some presets) to ask it."""
        if self._action_space is None:
            cfg = self.config
            self._action_space = run_action_space(self.path, cfg.env, cfg.env_kwargs)
        return self._action_space

    def make_env(self) -> Any:
        """A fresh real env of this run (its ``env`` and ``env_kwargs``)."""
        return make_env(self.config.env, **self.config.env_kwargs)

    def world_model(
        self,
        features: Literal["zh", "z"] = "zh",
        precision: Literal["float32", "bfloat16"] = "float32",
        round_: int | None = None,
    ) -> VMWorldModel:
        """V with the M of round ``round_`` (default: the last, ``mdnrnn/``), on the CPU."""
        return VMWorldModel(
            self.vae(),
            self.mdnrnn(round_),
            self.action_space(),
            features=features,
            termination=self.config.dream_termination,
            precision=precision,
        )
