"""M: the mixture-density recurrent network of Ha & Schmidhuber (2018).

An LSTM reads ``[z_t, a_t]``; from its new hidden state ``h_{t+1}`` three heads predict

* ``z_{t+1}`` as a mixture of ``K`` Gaussians. By default (as the original code) the mixture is
  *factorised*: each latent dimension has its own ``K`` mixture weights, means and scales, and
  dimensions are sampled independently. With ``shared_mixture_weights=True`` there is one
  weight vector per step and each component is a diagonal Gaussian over the whole ``z``: a
  sample picks one component for all dimensions, which keeps the dimensions' modes coherent.
* the reward ``r_t`` (squared error),
* the termination flag ``terminated_t`` (binary cross-entropy, positives up-weighted because
  deaths are rare).

Temperature ``tau`` (paper's code): mixture logits are divided by ``tau`` before the softmax and
the Gaussian scale is multiplied by ``sqrt(tau)``; ``tau -> 0`` gives the mode of the most
likely component, ``tau > 1`` a more uncertain dream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from dreamlab.models import actions_to_tensor

__all__ = ["MDNOutput", "MDNRNN", "MDNRNNConfig", "mixture_nll"]

Hidden = tuple[torch.Tensor, torch.Tensor]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class MDNRNNConfig:
    """Hyperparameters of the MDN-RNN (M)."""

    z_dim: int = 32
    """size of the latent vector z (must match the VAE)"""
    action_dim: int = 3
    """size of the action vector (number of actions for a one-hot discrete space)"""
    hidden_size: int = 256
    """LSTM hidden units"""
    num_mixtures: int = 5
    """Gaussians in the mixture (K)"""
    shared_mixture_weights: bool = False
    """one mixture-weight vector for all latent dims instead of one per dim (factorised)"""
    reward_weight: float = 1.0
    """weight of the reward mean-squared error in the loss (0 disables the reward head's loss)"""
    termination_weight: float = 1.0
    """weight of the termination binary cross-entropy in the loss (0 disables it)"""
    termination_pos_weight: float = 10.0
    """up-weighting of terminated=True samples in the BCE (deaths are rare)"""
    resample_z: bool = True
    """train on z re-sampled from V's posterior each batch (the paper); False: on its means"""

    def __post_init__(self) -> None:
        for name in ("z_dim", "action_dim", "hidden_size", "num_mixtures"):
            if getattr(self, name) < 1:
                raise ValueError(f"MDNRNNConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.termination_pos_weight <= 0:
            raise ValueError(
                "MDNRNNConfig.termination_pos_weight: expected > 0, "
                f"got {self.termination_pos_weight}"
            )


class MDNOutput(NamedTuple):
    """Predictions of the MDN-RNN.

    Shapes are given for ``forward``; ``step`` returns the same fields with the time axis removed.
    ``G`` is ``Z`` (factorised) or 1 (shared mixture weights).
    """

    logit_pi: torch.Tensor
    """(B, T, G, K) unnormalised mixture log-weights"""
    mu: torch.Tensor
    """(B, T, Z, K) component means of z_{t+1}"""
    log_sigma: torch.Tensor
    """(B, T, Z, K) component log standard deviations"""
    reward: torch.Tensor
    """(B, T) predicted reward r_t"""
    termination_logit: torch.Tensor
    """(B, T) logit of terminated_t"""
    hidden: Hidden
    """LSTM state (h, c), each (1, B, H)"""


def mixture_nll(
    target: torch.Tensor, logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor
) -> torch.Tensor:
    """Negative log-likelihood of ``target`` under the mixture, per latent dimension.

    Computed with ``log_softmax`` + ``logsumexp`` so that no probability is ever exponentiated
    on its own.

    Args:
        target: ``(..., Z)``.
        logit_pi: ``(..., Z, K)`` factorised or ``(..., 1, K)`` shared.
        mu: ``(..., Z, K)``.
        log_sigma: ``(..., Z, K)``.

    Returns:
        ``(...)`` NLL in nats divided by ``Z`` (so factorised and shared are on one scale).
    """
    z_dim = mu.shape[-2]
    y = target.unsqueeze(-1)  # (..., Z, 1)
    log_prob = -0.5 * ((y - mu) / log_sigma.exp()).pow(2) - log_sigma - _LOG_SQRT_2PI  # (..., Z, K)
    log_pi = F.log_softmax(logit_pi, dim=-1)  # (..., G, K)
    if logit_pi.shape[-2] == 1 and z_dim > 1:
        # One component explains the whole vector: sum dims inside the mixture.
        joint = log_pi.squeeze(-2) + log_prob.sum(dim=-2)  # (..., K)
        return -torch.logsumexp(joint, dim=-1) / z_dim  # (...)
    per_dim = torch.logsumexp(log_pi + log_prob, dim=-1)  # (..., Z)
    return -per_dim.mean(dim=-1)  # (...)


class MDNRNN(nn.Module):
    """LSTM + mixture density head over ``[z_t, a_t]`` predicting ``z_{t+1}``, ``r_t``, done."""

    config_class: ClassVar[type[MDNRNNConfig]] = MDNRNNConfig

    def __init__(self, config: MDNRNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MDNRNNConfig()
        z, k = config.z_dim, config.num_mixtures
        self.num_groups = 1 if config.shared_mixture_weights else z
        self.lstm = nn.LSTM(z + config.action_dim, config.hidden_size, batch_first=True)
        self.mdn_head = nn.Linear(config.hidden_size, self.num_groups * k + 2 * z * k)
        self.reward_head = nn.Linear(config.hidden_size, 1)
        self.termination_head = nn.Linear(config.hidden_size, 1)

    def initial_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero LSTM state ``(h, c)``, each ``(1, B, H)``."""
        dev = device if device is not None else self.mdn_head.weight.device
        h = torch.zeros(1, batch_size, self.config.hidden_size, device=dev)
        return h, torch.zeros_like(h)

    def _heads(self, h: torch.Tensor, hidden: Hidden) -> MDNOutput:
        """Apply the heads to hidden states ``(..., H)``."""
        z, k, g = self.config.z_dim, self.config.num_mixtures, self.num_groups
        params = self.mdn_head(h)  # (..., G*K + 2*Z*K)
        lead = h.shape[:-1]
        logit_pi = params[..., : g * k].reshape(*lead, g, k)  # (..., G, K)
        mu = params[..., g * k : g * k + z * k].reshape(*lead, z, k)  # (..., Z, K)
        log_sigma = params[..., g * k + z * k :].reshape(*lead, z, k)  # (..., Z, K)
        reward = self.reward_head(h).squeeze(-1)  # (...)
        termination_logit = self.termination_head(h).squeeze(-1)  # (...)
        return MDNOutput(logit_pi, mu, log_sigma, reward, termination_logit, hidden)

    def _check_inputs(self, z: torch.Tensor, action: torch.Tensor, lead: int) -> None:
        cfg = self.config
        if z.dim() != lead + 1 or z.shape[-1] != cfg.z_dim:
            raise ValueError(
                f"MDNRNN: expected z with {lead + 1} axes, last = z_dim {cfg.z_dim}, got {tuple(z.shape)}"
            )
        if action.shape[:-1] != z.shape[:-1] or action.shape[-1] != cfg.action_dim:
            raise ValueError(
                f"MDNRNN: expected action of shape {(*z.shape[:-1], cfg.action_dim)} "
                f"(float, one-hot for discrete spaces), got {tuple(action.shape)}"
            )

    def forward(
        self, z: torch.Tensor, action: torch.Tensor, hidden: Hidden | None = None
    ) -> MDNOutput:
        """Run the LSTM over a sequence (teacher forcing) and predict every next step.

        Args:
            z: ``(B, T, Z)`` latents ``z_0 .. z_{T-1}``.
            action: ``(B, T, A)`` float actions ``a_0 .. a_{T-1}``.
            hidden: LSTM state ``(h, c)`` each ``(1, B, H)``; ``None`` starts from zeros.

        Returns:
            :class:`MDNOutput` with time axis ``T`` (predictions for ``z_1 .. z_T``).
        """
        self._check_inputs(z, action, lead=2)
        x = torch.cat([z, action.to(z.dtype)], dim=-1)  # (B, T, Z+A)
        out, (h, c) = self.lstm(x, hidden)  # (B, T, H)
        return self._heads(out, (h, c))

    def step(
        self, z: torch.Tensor, action: torch.Tensor, hidden: Hidden | None = None
    ) -> MDNOutput:
        """One imagination step for a batch of dreams, without a time axis.

        This is the hot path of dream rollouts (thousands of parallel dreams, one step at a
        time), so it computes the LSTM cell directly from the ``nn.LSTM`` weights with two
        matmuls instead of going through the sequence kernel; results equal ``forward`` with
        ``T = 1``.

        Args:
            z: ``(B, Z)`` current latent.
            action: ``(B, A)`` float action.
            hidden: LSTM state ``(h, c)`` each ``(1, B, H)``; ``None`` starts from zeros.

        Returns:
            :class:`MDNOutput` with the time axis removed: ``logit_pi (B, G, K)``,
            ``mu``/``log_sigma (B, Z, K)``, ``reward``/``termination_logit (B,)``, ``hidden``
            ``(h, c)`` each ``(1, B, H)``.
        """
        self._check_inputs(z, action, lead=1)
        if hidden is None:
            hidden = self.initial_hidden(z.shape[0], z.device)
        h, c = hidden[0][0], hidden[1][0]  # (B, H) each
        x = torch.cat([z, action.to(z.dtype)], dim=-1)  # (B, Z+A)
        w_ih, w_hh, b_ih, b_hh = (
            cast(torch.Tensor, getattr(self.lstm, name))
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
        )
        gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=-1)  # PyTorch's gate order
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, H)
        h = torch.sigmoid(o) * torch.tanh(c)  # (B, H)
        return self._heads(h, (h.unsqueeze(0), c.unsqueeze(0)))

    @staticmethod
    def sample(
        logit_pi: torch.Tensor,
        mu: torch.Tensor,
        log_sigma: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Draw ``z_{t+1}`` from the predicted mixture at a temperature.

        Args:
            logit_pi: ``(B, G, K)`` with ``G = Z`` (factorised) or 1 (shared: one component
                is picked for all dimensions).
            mu: ``(B, Z, K)``.
            log_sigma: ``(B, Z, K)``.
            temperature: ``tau >= 0``; logits are divided by ``tau`` and sigma scaled by
                ``sqrt(tau)``. ``0`` returns the mean of the most likely component.
            generator: optional torch generator for reproducible dreams.

        Returns:
            ``(B, Z)`` sampled latents (any extra leading axes are kept).
        """
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        if temperature == 0:
            idx = logit_pi.argmax(dim=-1)  # (B, G)
        else:
            # Gumbel-max: a categorical draw per group without normalising the weights.
            u = torch.rand(logit_pi.shape, generator=generator, device=logit_pi.device)
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))  # (B, G, K)
            idx = (logit_pi / temperature + gumbel).argmax(dim=-1)  # (B, G)
        idx = idx.expand(mu.shape[:-1]).unsqueeze(-1)  # (B, Z, 1)
        mean = mu.gather(-1, idx).squeeze(-1)  # (B, Z)
        if temperature == 0:
            return mean
        sigma = log_sigma.gather(-1, idx).squeeze(-1).exp()  # (B, Z)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device)  # (B, Z)
        return mean + sigma * math.sqrt(temperature) * eps

    def _action_tensor(self, action: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Batch actions as float ``(B, T, A)``: integer ``(B, T)`` indices are one-hot encoded."""
        if not action.is_floating_point() and action.dim() == 2:
            return actions_to_tensor(action, "discrete", self.config.action_dim)  # (B, T, A)
        if action.dim() != 3 or tuple(action.shape[:2]) != shape:
            raise ValueError(
                f"MDNRNN.compute_loss: batch['action'] expected (B, T, {self.config.action_dim}) "
                f"float or (B, T) int with (B, T) = {shape}, got {tuple(action.shape)} {action.dtype}"
            )
        return actions_to_tensor(action.float(), "continuous", self.config.action_dim)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Teacher-forced loss on latent sequences.

        ``z`` is re-sampled from the stored posteriors each call (``mu + exp(logvar / 2) * eps``),
        which augments the data the way the original code does. Inputs are ``z_0 .. z_{T-1}``
        and targets ``z_1 .. z_T``.

        Args:
            batch: ``mu``, ``logvar`` ``(B, T+1, Z)``; ``action`` ``(B, T, A)`` float or
                ``(B, T)`` int (discrete); ``reward`` ``(B, T)``; ``terminated`` ``(B, T)`` bool;
                optional ``mask`` ``(B, T)`` (1 for real steps, 0 for padding).

        Returns:
            ``(loss, metrics)`` with metrics ``loss``, ``nll`` (nats per latent dim),
            ``reward`` (MSE) and ``termination`` (weighted BCE).
        """
        missing = {"mu", "logvar", "action", "reward", "terminated"} - set(batch)
        if missing:
            raise KeyError(f"MDNRNN.compute_loss: batch is missing keys {sorted(missing)}")
        cfg = self.config
        device = self.mdn_head.weight.device
        mu_post = torch.as_tensor(batch["mu"], device=device).float()  # (B, T+1, Z)
        logvar = torch.as_tensor(batch["logvar"], device=device).float()  # (B, T+1, Z)
        if mu_post.dim() != 3 or mu_post.shape[-1] != cfg.z_dim or logvar.shape != mu_post.shape:
            raise ValueError(
                f"MDNRNN.compute_loss: batch['mu'] and ['logvar'] expected (B, T+1, {cfg.z_dim}), "
                f"got {tuple(mu_post.shape)} and {tuple(logvar.shape)}"
            )
        b, t = mu_post.shape[0], mu_post.shape[1] - 1
        action = self._action_tensor(torch.as_tensor(batch["action"], device=device), (b, t))
        reward = torch.as_tensor(batch["reward"], device=device).float()  # (B, T)
        terminated = torch.as_tensor(batch["terminated"], device=device).float()  # (B, T)
        for name, tensor in (("reward", reward), ("terminated", terminated)):
            if tuple(tensor.shape) != (b, t):
                raise ValueError(
                    f"MDNRNN.compute_loss: batch['{name}'] expected (B, T) = {(b, t)}, "
                    f"got {tuple(tensor.shape)}"
                )
        if "mask" in batch:
            mask = torch.as_tensor(batch["mask"], device=device).float()  # (B, T)
        else:
            mask = torch.ones(b, t, device=device)
        denom = mask.sum().clamp_min(1.0)

        z = mu_post  # (B, T+1, Z)
        if cfg.resample_z:
            z = mu_post + torch.exp(0.5 * logvar) * torch.randn_like(mu_post)  # (B, T+1, Z)
        out = self(z[:, :-1], action)
        nll = (mixture_nll(z[:, 1:], out.logit_pi, out.mu, out.log_sigma) * mask).sum() / denom
        reward_mse = ((out.reward - reward).pow(2) * mask).sum() / denom
        pos_weight = torch.tensor(cfg.termination_pos_weight, device=device)
        bce = F.binary_cross_entropy_with_logits(
            out.termination_logit, terminated, pos_weight=pos_weight, reduction="none"
        )  # (B, T)
        termination = (bce * mask).sum() / denom
        loss = nll + cfg.reward_weight * reward_mse + cfg.termination_weight * termination
        metrics = {
            "loss": float(loss.detach()),
            "nll": float(nll.detach()),
            "reward": float(reward_mse.detach()),
            "termination": float(termination.detach()),
        }
        return loss, metrics
