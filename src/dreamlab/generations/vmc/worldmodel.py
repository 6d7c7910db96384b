"""``VMWorldModel``: V (VAE) + M (MDN-RNN) of the paper as a :class:`~dreamlab.worldmodel.WorldModel`,
and its start banks (real first frames; every real frame with the memory M had there)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch

from dreamlab.models import actions_to_tensor
from dreamlab.models.mdnrnn import MDNRNN
from dreamlab.models.vae import VAE
from dreamlab.worldmodel import ActionSpec, StartLatents, State, thin_bank

__all__ = ["VMWorldModel", "memory_start_latents", "start_latents_from_store"]


class VMWorldModel:
    """V (VAE) + M (MDN-RNN) as a :class:`WorldModel`.

    State: ``z (B, Z)`` the current latent, ``h``/``c (B, H)`` the LSTM memory.

    Choices (documented in docs/dream.md):

    - ``observe`` uses the VAE mean ``mu`` as z (``observe_sample=True`` samples
      ``mu + sigma * eps`` as the paper's training data did); the mean gives C a steadier input.
    - ``step`` samples z' from the MDN at ``temperature``; ``terminated`` is
      ``sigmoid(logit) > 0.5`` by default (``termination='sample'`` draws a Bernoulli, as the
      paper's Doom dream did, which makes deaths rarer than certain but possible).
    - ``features`` is ``[z, h]`` (F = Z + H), or ``z`` alone with ``features='z'`` (the paper's
      V-only ablation).
    - ``precision='bfloat16'`` runs M's matmuls under autocast (the LSTM cell state and z stay
      float32); on CPUs with AVX512-BF16 or on GPUs this is ~2-5x faster for big dream batches,
      at ~3 significant digits per matmul, far below the dream's own sampling noise.
    """

    def __init__(
        self,
        vae: VAE,
        mdnrnn: MDNRNN,
        action_space: ActionSpec | Any,
        *,
        features: Literal["zh", "z"] = "zh",
        termination: Literal["threshold", "sample"] = "threshold",
        observe_sample: bool = False,
        precision: Literal["float32", "bfloat16", "float16"] = "float32",
    ) -> None:
        spec = ActionSpec.from_space(action_space)
        mcfg = mdnrnn.config
        if vae.config.z_dim != mcfg.z_dim:
            raise ValueError(
                f"VMWorldModel: VAE z_dim {vae.config.z_dim} != MDN-RNN z_dim {mcfg.z_dim}"
            )
        if spec.n != mcfg.action_dim:
            raise ValueError(
                f"VMWorldModel: action space {spec.kind}({spec.n}) does not fit the MDN-RNN's "
                f"action_dim {mcfg.action_dim}"
            )
        if features not in ("zh", "z"):
            raise ValueError(f"VMWorldModel: features must be 'zh' or 'z', got {features!r}")
        if termination not in ("threshold", "sample"):
            raise ValueError(
                f"VMWorldModel: termination must be 'threshold' or 'sample', got {termination!r}"
            )
        if precision not in ("float32", "bfloat16", "float16"):
            raise ValueError(
                "VMWorldModel: precision must be 'float32', 'bfloat16' or 'float16', got "
                f"{precision!r}"
            )
        self.precision = precision
        self.vae = vae.eval()
        self.mdnrnn = mdnrnn.eval()
        self.action_spec = spec
        self.feature_mode = features
        self.termination = termination
        self.observe_sample = observe_sample
        self.z_dim = mcfg.z_dim
        self.hidden_size = mcfg.hidden_size
        self.action_dim = mcfg.action_dim
        self.feature_dim = self.z_dim + (self.hidden_size if features == "zh" else 0)

    @property
    def device(self) -> torch.device:
        """Where the models (and every state tensor) live."""
        return next(self.mdnrnn.parameters()).device

    def to(self, device: torch.device | str) -> VMWorldModel:
        """Move V and M to ``device``; returns self."""
        self.vae.to(device)
        self.mdnrnn.to(device)
        return self

    # ------------------------------------------------------------------ protocol
    @torch.inference_mode()
    def initial_state(self, batch_size: int) -> State:
        """Zero latent and zero LSTM memory for ``batch_size`` dreams."""
        dev = self.device
        return {
            "z": torch.zeros(batch_size, self.z_dim, device=dev),  # (B, Z)
            "h": torch.zeros(batch_size, self.hidden_size, device=dev),  # (B, H)
            "c": torch.zeros(batch_size, self.hidden_size, device=dev),  # (B, H)
        }

    @torch.inference_mode()
    def observe(
        self, state: State, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> State:
        """Set z from real frames ``(B, 3, H, W)`` in ``[0, 1]``; the memory is kept."""
        mu, logvar = self.vae.encode(frames.to(self.device))  # (B, Z) each
        z = mu
        if self.observe_sample:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device)  # (B, Z)
            z = mu + torch.exp(0.5 * logvar) * eps
        return {**state, "z": z}

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env actions (``(B,)`` int indices or ``(B, A)`` floats) -> float ``(B, A)``."""
        action = action.to(self.device)
        if self.action_spec.kind == "discrete" and not action.is_floating_point():
            return actions_to_tensor(action.reshape(-1), "discrete", self.action_dim)  # (B, A)
        return actions_to_tensor(action.float(), "continuous", self.action_dim)  # (B, A)

    @torch.inference_mode()
    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """One LSTM step on ``[z, a]`` -> ``h'``; sample ``z'`` at ``temperature``.

        Returns:
            ``(state', reward (B,), terminated (B,) bool)``.
        """
        a = self.encode_action(action)  # (B, A)
        low = self.precision != "float32"
        dtype = torch.bfloat16 if self.precision == "bfloat16" else torch.float16
        with torch.autocast(self.device.type, dtype=dtype, enabled=low):
            out = self.mdnrnn.step(
                state["z"], a, (state["h"].unsqueeze(0), state["c"].unsqueeze(0))
            )
        z_next = self.mdnrnn.sample(
            out.logit_pi.float(), out.mu.float(), out.log_sigma.float(), temperature, generator
        )  # (B, Z)
        terminated = self.terminated(out.termination_logit, generator)  # (B,)
        h, c = out.hidden[0][0].float(), out.hidden[1][0].float()  # (B, H) each
        return {"z": z_next, "h": h, "c": c}, out.reward.float(), terminated

    def terminated(
        self, logit: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Imagined episode ends ``(B,)`` bool from M's termination logits, by ``termination``."""
        p_term = torch.sigmoid(logit.float())  # (B,)
        if self.termination == "sample":
            u = torch.rand(p_term.shape, generator=generator, device=p_term.device)  # (B,)
            return u < p_term
        return p_term > 0.5

    @torch.inference_mode()
    def decode(self, state: State) -> torch.Tensor:
        """Frames ``(B, 3, H, W)`` in ``[0, 1]`` decoded from z."""
        return self.vae.decode(state["z"])

    def features(self, state: State) -> torch.Tensor:
        """``[z, h]`` ``(B, Z + H)``, or ``z`` ``(B, Z)`` with ``features='z'``."""
        if self.feature_mode == "z":
            return state["z"]
        return torch.cat([state["z"], state["h"]], dim=-1)  # (B, Z+H)

    @torch.inference_mode()
    def start_state(self, start: StartLatents, generator: torch.Generator | None = None) -> State:
        """Begin dreams at real frames: ``z ~ N(mu, exp(logvar))``, zero memory, or the
        memory M had there when the bank also holds ``h`` and ``c``.

        Args:
            start: ``{"mu": (B, Z), "logvar": (B, Z)}`` rows of a start bank (see
                :func:`start_latents_from_store`), plus ``"h"``/``"c"`` ``(B, H)`` for a warm
                bank (see :func:`memory_start_latents`).
        """
        who = type(self).__name__
        if "mu" not in start or "logvar" not in start:
            raise ValueError(
                f"{who}.start_state: start latents need keys 'mu' and 'logvar', got {sorted(start)}"
            )
        mu = start["mu"].to(self.device, torch.float32)  # (B, Z)
        logvar = start["logvar"].to(self.device, torch.float32)  # (B, Z)
        if mu.shape[-1] != self.z_dim:
            raise ValueError(
                f"{who}.start_state: latents have size {mu.shape[-1]}, the model's z_dim "
                f"is {self.z_dim}"
            )
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)  # (B, Z)
        state = self.initial_state(mu.shape[0])
        state["z"] = mu + torch.exp(0.5 * logvar) * eps
        if "h" in start or "c" in start:
            # a warm bank (memory_start_latents): the memory M had at that real frame
            for key in ("h", "c"):
                if key not in start or tuple(start[key].shape) != tuple(state[key].shape):
                    got = tuple(start[key].shape) if key in start else "nothing"
                    raise ValueError(
                        f"{who}.start_state: a warm start bank needs 'h' and 'c' of shape "
                        f"{tuple(state[key].shape)}, got {got} for {key!r}"
                    )
                state[key] = start[key].to(self.device, torch.float32)
        return state


def start_latents_from_store(
    store: Any, *, frames: Literal["first", "all"] = "first", max_rows: int | None = None
) -> StartLatents:
    """Collect a bank of dream start points from a latent store.

    Args:
        store: an ``EpisodeStore`` of latents (duck-typed: ``.indices`` and ``.episode(i)``
            returning ``mu``/``logvar`` arrays of shape ``(T+1, Z)``).
        frames: 'first' takes each episode's first observation (the paper: dreams start where
            real episodes start); 'all' takes every observation (more variety, but the LSTM
            memory starts at zero mid-episode).
        max_rows: keep at most this many rows (evenly spaced) to bound memory.

    Returns:
        ``{"mu": (N, Z), "logvar": (N, Z)}`` float32 CPU tensors.
    """
    mus: list[np.ndarray] = []
    logvars: list[np.ndarray] = []
    indices: Iterable[int] = store.indices
    for i in indices:
        ep: Mapping[str, np.ndarray] = store.episode(i)
        if "mu" not in ep or "logvar" not in ep:
            raise ValueError(
                f"episode {i} of {getattr(store, 'path', 'the store')}: a latent store needs "
                f"arrays 'mu' and 'logvar', found {sorted(ep)}"
            )
        if frames == "first":
            mus.append(np.asarray(ep["mu"][:1], np.float32))
            logvars.append(np.asarray(ep["logvar"][:1], np.float32))
        else:
            mus.append(np.asarray(ep["mu"], np.float32))
            logvars.append(np.asarray(ep["logvar"], np.float32))
    if not mus:
        raise ValueError(f"{getattr(store, 'path', 'latent store')}: holds no episodes")
    bank = {"mu": np.concatenate(mus), "logvar": np.concatenate(logvars)}  # (N, Z) each
    return {key: torch.from_numpy(value.copy()) for key, value in thin_bank(bank, max_rows).items()}


@torch.inference_mode()
def memory_start_latents(
    world_model: VMWorldModel, store: Any, *, max_rows: int | None = None, batch_size: int = 256
) -> StartLatents:
    """A start bank of every real observation *with the memory M had there*.

    M runs over each real episode as the agent's memory does in the real env (z = V's mean of
    each real frame, the real actions), and the bank keeps ``h``/``c`` before each observation
    beside its ``mu``/``logvar``. A dream begun from a row therefore starts mid-episode with
    a memory that has seen the ball move, as C's memory has when it acts in reality; with
    :func:`start_latents_from_store` (``frames='all'``) the memory starts at zero.

    Args:
        world_model: the V+M whose M computes the memory (an ensemble's members each keep
            their own, under ``h_members``/``c_members``).
        store: a latent ``EpisodeStore`` (``mu``, ``logvar``, ``action``).
        max_rows: keep at most this many rows (evenly spaced) to bound memory.
        batch_size: episodes run through M at once.

    Returns:
        ``{"mu", "logvar": (N, Z), "h", "c": (N, H)}`` float32 CPU tensors, plus
        ``"h_members", "c_members": (N, M, H)`` for an ensemble.
    """
    where = getattr(store, "path", "the store")
    episodes: list[Mapping[str, np.ndarray]] = []
    for i in store.indices:
        ep = store.episode(i)
        missing = sorted({"mu", "logvar", "action"} - set(ep))
        if missing:
            raise ValueError(f"episode {i} of {where}: a latent store needs arrays {missing}")
        episodes.append(ep)
    if not episodes:
        raise ValueError(f"{where}: holds no episodes")
    ensemble = hasattr(world_model, "members")
    feature = int(getattr(world_model, "feature_member", 0))
    keys = ("mu", "logvar", "h", "c") + (("h_members", "c_members") if ensemble else ())
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
    for first in range(0, len(episodes), batch_size):
        chunk = episodes[first : first + batch_size]
        lengths = [len(ep["mu"]) for ep in chunk]  # observations T+1 per episode
        longest = max(lengths)
        b, z_dim = len(chunk), world_model.z_dim
        mu = torch.zeros(b, longest, z_dim)  # (b, T+1, Z)
        # the last observation has no action after it; padded steps (never kept) get zeros
        act = torch.zeros(b, max(longest - 1, 0), world_model.action_dim)  # (b, T, A)
        for j, ep in enumerate(chunk):
            mu[j, : lengths[j]] = torch.from_numpy(np.array(ep["mu"], np.float32))
            if lengths[j] > 1:
                a = world_model.encode_action(torch.from_numpy(np.array(ep["action"])))
                act[j, : lengths[j] - 1] = a.cpu()
        # every member of an ensemble keeps its own memory; a V+M has one member, M
        h_all, c_all = _memories(world_model, mu, act)  # (b, T+1, M, H) each
        for j, ep in enumerate(chunk):
            n = lengths[j]
            rows["mu"].append(mu[j, :n])
            rows["logvar"].append(torch.from_numpy(np.array(ep["logvar"], np.float32)))
            rows["h"].append(h_all[j, :n, feature])
            rows["c"].append(c_all[j, :n, feature])
            if ensemble:
                rows["h_members"].append(h_all[j, :n])
                rows["c_members"].append(c_all[j, :n])
    bank = thin_bank({key: torch.cat(value).float() for key, value in rows.items()}, max_rows)
    return {key: value.contiguous() for key, value in bank.items()}


def _memories(
    world_model: VMWorldModel, mu: torch.Tensor, act: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run each of the world model's M over padded episodes ``mu (b, T+1, Z)``, ``act (b, T, A)``
    from zero memory; returns ``h``, ``c`` before each observation, ``(b, T+1, M, H)`` on the CPU
    (M = 1 for a V+M, the members of an ensemble)."""
    members = list(getattr(world_model, "members", [world_model.mdnrnn]))
    dev = world_model.device
    b, steps = mu.shape[0], mu.shape[1] - 1
    h_out, c_out = [], []
    for member in members:
        h = torch.zeros(b, world_model.hidden_size, device=dev)  # (b, H)
        c = torch.zeros_like(h)
        hs, cs = [h], [c]  # memory before observation t
        for t in range(steps):
            out = member.step(mu[:, t].to(dev), act[:, t].to(dev), (h.unsqueeze(0), c.unsqueeze(0)))
            h, c = out.hidden[0][0], out.hidden[1][0]
            hs.append(h)
            cs.append(c)
        h_out.append(torch.stack(hs, 1).float().cpu())  # (b, T+1, H)
        c_out.append(torch.stack(cs, 1).float().cpu())
    return torch.stack(h_out, 2), torch.stack(c_out, 2)
