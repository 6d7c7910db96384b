"""An ensemble of M dynamics models as one :class:`~dreamlab.worldmodel.WorldModel`.

One V and M MDN-RNNs trained on bootstrap resamples of the same episodes (see
:mod:`dreamlab.generations.vmc.train_ensemble`). Where the members agree the data pinned the dynamics down;
where they disagree the model is guessing (epistemic uncertainty: too little or no data there).
The MDN's own mixture spread is the *aleatoric* part (a ball's unknown new direction), which
more data would not shrink; disagreement between the members' expected next z separates the two.

Choices (documented in docs/uncertainty.md):

- **Every member reads the same input** ``[z, a]`` each step (each keeps its own LSTM memory);
  the next ``z`` (and the reward and termination) come from *one* member, drawn afresh per dream
  per step (``member_sampling="per_step"``, PETS' TS-1): the dream is then never a single
  member's world, so a controller cannot exploit one member's quirks for a whole episode.
  ``"per_dream"`` keeps one member for the whole dream (PETS' TS-inf).
- **Disagreement** of a step = variance across members of each member's expected next z
  (mixture mean ``sum_k pi_k mu_k``), averaged over z dims (``disagreement="z"``); ``"reward"``
  uses the variance of the members' predicted reward, ``"z+reward"`` the sum.
- **Pessimism**: the reward returned is ``reward - pessimism * disagreement``, so the CMA-ES
  dream evaluator and any planner get an uncertainty penalty without knowing about it.
- **Features** are ``[z, h]`` of one designated member (``feature_member``, default 0). Built
  from a run, member 0 is the run's own ``mdnrnn/``, so a controller trained in the ensemble
  dream reads exactly what it reads in the real env through the single ``VMWorldModel``, and a
  controller trained on the single model works in the ensemble dream unchanged.

State keys: ``z (B, Z)``, ``h``/``c (B, H)`` (the feature member's memory, as in
``VMWorldModel``), ``h_members``/``c_members (B, M, H)`` (every member's memory),
``member (B,)`` int64 (the member that drew the last step), and ``disagreement``,
``z_disagreement``, ``reward_disagreement (B,)`` of the step that produced the state (zero
after a reset or ``observe``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

from dreamlab.generations.vmc.worldmodel import VMWorldModel
from dreamlab.models.mdnrnn import MDNRNN, MDNOutput
from dreamlab.models.vae import VAE
from dreamlab.worldmodel import ActionSpec, StartLatents, State

__all__ = ["EnsembleWorldModel", "mixture_mean"]


def mixture_mean(logit_pi: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Expected value of the MDN's mixture per latent dim.

    Args:
        logit_pi: ``(..., G, K)`` with ``G = Z`` (factorised) or 1 (shared weights).
        mu: ``(..., Z, K)``.

    Returns:
        ``(..., Z)`` ``sum_k softmax(logit_pi)_k * mu_k``.
    """
    weights = F.softmax(logit_pi.float(), dim=-1)  # (..., G, K), broadcasts over Z when G = 1
    return (weights * mu.float()).sum(-1)  # (..., Z)


class EnsembleWorldModel(VMWorldModel):
    """V + an ensemble of M MDN-RNNs as a :class:`~dreamlab.worldmodel.WorldModel`.

    A :class:`~dreamlab.generations.vmc.worldmodel.VMWorldModel` whose M is the feature member: ``observe``,
    ``decode``, ``features`` and the start banks are V+M's; ``step`` runs every member.

    Args:
        vae: V (shared by every member).
        members: at least two MDN-RNNs with the same ``z_dim``, ``action_dim`` and
            ``hidden_size`` (train them with :func:`dreamlab.generations.vmc.train_ensemble.train_ensemble`).
        action_space: the env's action space (gymnasium space or :class:`ActionSpec`).
        pessimism: lambda >= 0; ``step`` returns ``reward - lambda * disagreement``.
        disagreement: what the penalty measures: ``"z"`` (variance across members of the
            expected next z, mean over dims), ``"reward"`` (variance of predicted rewards) or
            ``"z+reward"``.
        member_sampling: ``"per_step"`` (a random member draws each step of each dream, TS-1)
            or ``"per_dream"`` (a dream keeps the member drawn at its start, TS-inf).
        feature_member: whose memory ``h`` the controller reads.
        features: ``"zh"`` (``[z, h]``) or ``"z"``.
        termination: ``"threshold"`` (``sigmoid(logit) > 0.5``) or ``"sample"``.
        observe_sample: ``observe`` samples z from V's posterior instead of using its mean.
    """

    def __init__(
        self,
        vae: VAE,
        members: Sequence[MDNRNN],
        action_space: ActionSpec | Any,
        *,
        pessimism: float = 0.0,
        disagreement: Literal["z", "reward", "z+reward"] = "z",
        member_sampling: Literal["per_step", "per_dream"] = "per_step",
        feature_member: int = 0,
        features: Literal["zh", "z"] = "zh",
        termination: Literal["threshold", "sample"] = "threshold",
        observe_sample: bool = False,
    ) -> None:
        members = list(members)
        if len(members) < 2:
            raise ValueError(
                f"EnsembleWorldModel: needs at least 2 members to measure disagreement, got "
                f"{len(members)} (train them with `dreamlab train-ensemble`)"
            )
        spec = ActionSpec.from_space(action_space)
        first = members[0].config
        for i, m in enumerate(members):
            c = m.config
            shape = (c.z_dim, c.action_dim, c.hidden_size)
            if shape != (first.z_dim, first.action_dim, first.hidden_size):
                raise ValueError(
                    f"EnsembleWorldModel: member {i} has (z_dim, action_dim, hidden_size) = "
                    f"{shape}, member 0 has {(first.z_dim, first.action_dim, first.hidden_size)}"
                )
        if not pessimism >= 0:
            raise ValueError(f"EnsembleWorldModel: pessimism must be >= 0, got {pessimism}")
        if disagreement not in ("z", "reward", "z+reward"):
            raise ValueError(
                "EnsembleWorldModel: disagreement must be 'z', 'reward' or 'z+reward', got "
                f"{disagreement!r}"
            )
        if member_sampling not in ("per_step", "per_dream"):
            raise ValueError(
                "EnsembleWorldModel: member_sampling must be 'per_step' or 'per_dream', got "
                f"{member_sampling!r}"
            )
        if not 0 <= feature_member < len(members):
            raise ValueError(
                f"EnsembleWorldModel: feature_member {feature_member} is not in [0, {len(members)})"
            )
        super().__init__(
            vae,
            members[feature_member],
            spec,
            features=features,
            termination=termination,
            observe_sample=observe_sample,
        )
        self.members = [m.eval() for m in members]
        self.pessimism = float(pessimism)
        self.disagreement_kind = disagreement
        self.member_sampling = member_sampling
        self.feature_member = feature_member
        self.num_members = len(members)

    def to(self, device: torch.device | str) -> EnsembleWorldModel:
        """Move V and every member to ``device``; returns self."""
        super().to(device)
        for m in self.members:
            m.to(device)
        return self

    # ------------------------------------------------------------------ protocol
    @torch.inference_mode()
    def initial_state(self, batch_size: int) -> State:
        """Zero latent and memory; member ``i % M`` for dream ``i`` (matters for per_dream)."""
        dev = self.device
        b, m, h = batch_size, self.num_members, self.hidden_size
        return {
            "z": torch.zeros(b, self.z_dim, device=dev),  # (B, Z)
            "h": torch.zeros(b, h, device=dev),  # (B, H)
            "c": torch.zeros(b, h, device=dev),  # (B, H)
            "h_members": torch.zeros(b, m, h, device=dev),  # (B, M, H)
            "c_members": torch.zeros(b, m, h, device=dev),  # (B, M, H)
            "member": torch.arange(b, device=dev) % m,  # (B,)
            "disagreement": torch.zeros(b, device=dev),  # (B,)
            "z_disagreement": torch.zeros(b, device=dev),  # (B,)
            "reward_disagreement": torch.zeros(b, device=dev),  # (B,)
        }

    def predict_members(
        self, state: State, action: torch.Tensor
    ) -> tuple[list[MDNOutput], torch.Tensor, torch.Tensor]:
        """Run every member one step on the same ``[z, a]``.

        Returns:
            ``(outputs, z_disagreement (B,), reward_disagreement (B,))``: one
            :class:`~dreamlab.models.mdnrnn.MDNOutput` per member (no time axis), the variance
            across members of the expected next z (mean over dims), and of the reward.
        """
        a = self.encode_action(action)  # (B, A)
        h_all, c_all = state["h_members"], state["c_members"]  # (B, M, H) each
        outs = [
            m.step(state["z"], a, (h_all[:, i].unsqueeze(0), c_all[:, i].unsqueeze(0)))
            for i, m in enumerate(self.members)
        ]
        means = torch.stack([mixture_mean(o.logit_pi, o.mu) for o in outs], dim=1)  # (B, M, Z)
        rewards = torch.stack([o.reward.float() for o in outs], dim=1)  # (B, M)
        z_dis = means.var(dim=1, unbiased=False).mean(-1)  # (B,)
        r_dis = rewards.var(dim=1, unbiased=False)  # (B,)
        return outs, z_dis, r_dis

    def _combine(self, z_dis: torch.Tensor, r_dis: torch.Tensor) -> torch.Tensor:
        if self.disagreement_kind == "z":
            return z_dis
        if self.disagreement_kind == "reward":
            return r_dis
        return z_dis + r_dis

    @torch.inference_mode()
    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Every member steps; one member per dream draws ``z'``, the reward and termination.

        Returns:
            ``(state', reward - pessimism * disagreement (B,), terminated (B,) bool)``; the
            unpenalised reward is ``reward + pessimism * state'["disagreement"]``.
        """
        outs, z_dis, r_dis = self.predict_members(state, action)
        b = z_dis.shape[0]
        if self.member_sampling == "per_step":
            member = torch.randint(
                self.num_members, (b,), generator=generator, device=self.device
            )  # (B,)
        else:
            member = state["member"]  # (B,)
        rows = torch.arange(b, device=self.device)  # (B,)
        logit_pi = torch.stack([o.logit_pi for o in outs], dim=1)[rows, member]  # (B, G, K)
        mu = torch.stack([o.mu for o in outs], dim=1)[rows, member]  # (B, Z, K)
        log_sigma = torch.stack([o.log_sigma for o in outs], dim=1)[rows, member]  # (B, Z, K)
        reward = torch.stack([o.reward for o in outs], dim=1)[rows, member].float()  # (B,)
        term_logit = torch.stack([o.termination_logit for o in outs], dim=1)[rows, member]
        z_next = MDNRNN.sample(
            logit_pi.float(), mu.float(), log_sigma.float(), temperature, generator
        )  # (B, Z)
        terminated = self.terminated(term_logit, generator)  # (B,)
        h_all = torch.stack([o.hidden[0][0].float() for o in outs], dim=1)  # (B, M, H)
        c_all = torch.stack([o.hidden[1][0].float() for o in outs], dim=1)  # (B, M, H)
        dis = self._combine(z_dis, r_dis)  # (B,)
        new_state = {
            "z": z_next,
            "h": h_all[:, self.feature_member],
            "c": c_all[:, self.feature_member],
            "h_members": h_all,
            "c_members": c_all,
            "member": member,
            "disagreement": dis,
            "z_disagreement": z_dis,
            "reward_disagreement": r_dis,
        }
        return new_state, reward - self.pessimism * dis, terminated

    @torch.inference_mode()
    def start_state(self, start: StartLatents, generator: torch.Generator | None = None) -> State:
        """Begin dreams at real first frames like V+M; for ``per_dream`` sampling each dream's
        member is drawn here.

        Args:
            start: ``{"mu": (B, Z), "logvar": (B, Z)}`` rows of a start bank; a warm bank
                adds ``"h"``/``"c"`` ``(B, H)`` and every member's, ``"h_members"``/
                ``"c_members"`` ``(B, M, H)``.
        """
        state = super().start_state(start, generator)
        if "h" in start:
            # a warm bank (memory_start_latents): each member's memory at that real frame
            want = tuple(state["h_members"].shape)
            for key in ("h_members", "c_members"):
                if key not in start or tuple(start[key].shape) != want:
                    got = tuple(start[key].shape) if key in start else "nothing"
                    raise ValueError(
                        f"EnsembleWorldModel.start_state: a warm start bank needs every member's "
                        f"memory, {key!r} of shape {want}, got {got}; build it with "
                        "memory_start_latents(ensemble, store)"
                    )
                state[key] = start[key].to(self.device, torch.float32)
        if self.member_sampling == "per_dream":
            b = state["z"].shape[0]
            state["member"] = torch.randint(
                self.num_members, (b,), generator=generator, device=self.device
            )
        return state
