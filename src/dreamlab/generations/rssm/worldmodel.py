"""The RSSM (``dreamlab.models.rssm``) as a :class:`~dreamlab.worldmodel.WorldModel`.

State: ``deter (B, D)`` the GRU memory h and ``stoch (B, S*K)`` the one-hot latent z.

- ``observe``: z := a sample of the posterior ``q(z | h, e(frame))`` (or its mode with
  ``observe_sample=False``); h is kept.
- ``step``: ``h' = GRU(h, [z, a])``, ``z' ~ p(z' | h')`` at ``temperature``; the reward and the
  continuation are read from ``[h', z']`` (the model was trained to predict ``r_t`` and
  ``1 - terminated_t`` from the state after the action). ``terminated = p(continue) < 0.5``.
- ``features``: ``[h, z]`` ``(B, D + S*K)``.
- ``start_state``: rows of a start bank ``{"deter": (N, D), "stoch": (N, S*K)}`` of posterior
  states filtered from real episodes (:func:`rssm_start_states`).

So the real-env loop ``observe -> features -> act -> step`` runs exactly the recursion the model
was trained on: the posterior at step t sees ``h_t`` computed from ``z_{t-1}`` and ``a_{t-1}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from dreamlab.models import frames_to_tensor
from dreamlab.models.rssm import RSSM
from dreamlab.worldmodel import ActionSpec, StartLatents, State

__all__ = ["RSSMWorldModel", "rssm_start_states"]


class RSSMWorldModel:
    """An :class:`~dreamlab.models.rssm.RSSM` behind the ``WorldModel`` protocol.

    Args:
        rssm: the trained model (put in eval mode).
        action_space: the env's action space (must match the model's action config).
        observe_sample: sample the posterior in ``observe`` (True, as in training) or take each
            variable's most likely class (False: a steadier input for a policy).
    """

    def __init__(
        self, rssm: RSSM, action_space: ActionSpec | Any, *, observe_sample: bool = True
    ) -> None:
        spec = ActionSpec.from_space(action_space)
        cfg = rssm.config
        if spec.kind != cfg.action_kind or spec.n != cfg.action_dim:
            raise ValueError(
                f"RSSMWorldModel: action space {spec.kind}({spec.n}) does not fit the RSSM's "
                f"{cfg.action_kind}({cfg.action_dim})"
            )
        self.rssm = rssm.eval()
        self.action_spec = spec
        self.observe_sample = observe_sample
        self.deter_dim = cfg.deter
        self.stoch_dim = cfg.stoch_dim
        self.action_dim = cfg.action_dim
        self.feature_dim = cfg.feature_dim

    @property
    def device(self) -> torch.device:
        """Where the model (and every state tensor) lives."""
        return next(self.rssm.parameters()).device

    def to(self, device: torch.device | str) -> RSSMWorldModel:
        """Move the model to ``device``; returns self."""
        self.rssm.to(device)
        return self

    # ------------------------------------------------------------------ protocol
    @torch.inference_mode()
    def initial_state(self, batch_size: int) -> State:
        """Zero memory and zero latent for ``batch_size`` dreams (what training starts from)."""
        dev = self.device
        return {
            "deter": torch.zeros(batch_size, self.deter_dim, device=dev),  # (B, D)
            "stoch": torch.zeros(batch_size, self.stoch_dim, device=dev),  # (B, S*K)
        }

    @torch.inference_mode()
    def observe(
        self, state: State, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> State:
        """Replace z by the posterior given real frames ``(B, 3, H, W)`` in ``[0, 1]``."""
        embed = self.rssm.embed(frames.to(self.device))  # (B, E)
        logits = self.rssm.post_logits(state["deter"], embed)  # (B, S, K)
        stoch = self.rssm.sample_stoch(logits, 1.0 if self.observe_sample else 0.0, generator)
        return {"deter": state["deter"], "stoch": stoch}

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env actions (``(B,)`` int indices or ``(B, A)`` floats) -> float ``(B, A)``."""
        return self.rssm.encode_action(action.to(self.device))

    @torch.inference_mode()
    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Prior step: ``(state', reward (B,) float32, terminated (B,) bool)``."""
        a = self.encode_action(action)  # (B, A)
        deter = self.rssm.img_step(state["deter"], state["stoch"], a)  # (B, D)
        stoch = self.rssm.sample_stoch(self.rssm.prior_logits(deter), temperature, generator)
        feats = torch.cat([deter, stoch], -1)  # (B, F)
        reward = self.rssm.reward(feats).float()  # (B,)
        terminated = self.rssm.cont_logit(feats) < 0.0  # p(continue) < 0.5, (B,)
        return {"deter": deter, "stoch": stoch}, reward, terminated

    @torch.inference_mode()
    def decode(self, state: State) -> torch.Tensor:
        """Frames ``(B, 3, H, W)`` in ``[0, 1]`` decoded from ``[h, z]``."""
        return self.rssm.decode_features(self.features(state)).clamp(0.0, 1.0)

    def features(self, state: State) -> torch.Tensor:
        """``[h, z]`` ``(B, D + S*K)``."""
        return torch.cat([state["deter"], state["stoch"]], dim=-1)

    @torch.inference_mode()
    def start_state(self, start: StartLatents, generator: torch.Generator | None = None) -> State:
        """Begin dreams at rows ``{"deter": (B, D), "stoch": (B, S*K)}`` of a start bank."""
        if "deter" not in start or "stoch" not in start:
            raise ValueError(
                "RSSMWorldModel.start_state: start states need keys 'deter' and 'stoch', got "
                f"{sorted(start)} (build them with dreamlab.generations.rssm.worldmodel.rssm_start_states)"
            )
        deter = start["deter"].to(self.device, torch.float32)
        stoch = start["stoch"].to(self.device, torch.float32)
        if deter.shape[-1] != self.deter_dim or stoch.shape[-1] != self.stoch_dim:
            raise ValueError(
                f"RSSMWorldModel.start_state: got deter {tuple(deter.shape)} and stoch "
                f"{tuple(stoch.shape)}, the model needs (B, {self.deter_dim}) and "
                f"(B, {self.stoch_dim})"
            )
        return {"deter": deter.clone(), "stoch": stoch.clone()}


@torch.inference_mode()
def rssm_start_states(
    world_model: RSSMWorldModel,
    store: Any,
    *,
    frames: Literal["first", "all"] = "first",
    max_episodes: int | None = None,
) -> StartLatents:
    """A bank of dream start states: real episodes filtered by the posterior.

    Args:
        world_model: the RSSM world model.
        store: an ``EpisodeStore`` of frames (``obs (T+1, H, W, 3)``, ``action (T, ...)``).
        frames: 'first' keeps each episode's first state (dreams start where episodes start);
            'all' keeps every step's state (more variety, memory already filled).
        max_episodes: use at most this many episodes (evenly spaced).

    Returns:
        ``{"deter": (N, D), "stoch": (N, S*K)}`` float32 CPU tensors.
    """
    indices = list(store.indices)
    if not indices:
        raise ValueError(f"{getattr(store, 'path', 'store')}: holds no episodes")
    if max_episodes is not None and len(indices) > max_episodes:
        keep = np.linspace(0, len(indices) - 1, max_episodes).round().astype(np.int64)
        indices = [indices[i] for i in keep]
    deters, stochs = [], []
    rssm = world_model.rssm
    for i in indices:
        ep: Mapping[str, np.ndarray] = store.episode(i)
        if "obs" not in ep:
            raise ValueError(f"episode {i}: an RSSM start bank needs frames 'obs'")
        if frames == "first":
            obs = frames_to_tensor(np.asarray(ep["obs"][:1]), world_model.device)  # (1, 3, H, W)
            state = world_model.observe(world_model.initial_state(1), obs)
            deters.append(state["deter"].cpu())
            stochs.append(state["stoch"].cpu())
            continue
        obs = frames_to_tensor(np.asarray(ep["obs"]), world_model.device)[None]  # (1, T+1, ...)
        act = rssm.encode_action(torch.as_tensor(np.asarray(ep["action"]), device=obs.device))
        seq = rssm.observe_sequence(obs, act[None])
        deters.append(seq.deter[0].cpu())
        stochs.append(seq.stoch[0].cpu())
    return {"deter": torch.cat(deters).float(), "stoch": torch.cat(stochs).float()}
