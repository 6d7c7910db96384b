"""RSSM: the recurrent state-space model of Dreamer, trained end to end (DreamerV3 recipe).

One network replaces V and M. Its state at step t is ``(h_t, z_t)``:

- ``h_t`` (B, D) deterministic memory, ``h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])``;
- ``z_t`` (B, S*K) stochastic latent: S categorical variables with K classes each, one-hot,
  sampled with straight-through gradients from a 1%-uniform mix of the softmax (DreamerV3).

Two distributions over ``z_t``: the *prior* ``p(z_t | h_t)`` (imagination) and the *posterior*
``q(z_t | h_t, e_t)`` that also sees the frame embedding ``e_t``. Heads read the features
``[h_t, z_t]``: a transposed-conv decoder (frame), a reward head (two-hot over symlog bins) and a
continuation head (Bernoulli logit of "the episode goes on").

Timing (matches the ``WorldModel`` protocol's ``observe -> act -> step``)::

    h_0 = 0                    z_0 ~ q(. | h_0, e(o_0))
    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])   z_t ~ q(. | h_t, e(o_t))   (prior p(. | h_t))
    r_{t-1}, 1 - terminated_{t-1}  predicted from [h_t, z_t]

Loss (per step, averaged over batch and time): decoder squared error summed over pixels (with an
optional extra weight on foreground pixels, as V has for Catch's 3x3 ball), two-hot reward
cross-entropy, continuation BCE, and KL balancing with free bits:
``dyn_scale * max(free_nats, KL(sg(q) || p)) + rep_scale * max(free_nats, KL(q || sg(p)))``.

For 64x64 frames with the ``dreamerv3-s`` preset the encoder is::

    (B,3,64,64) -conv4s2-> (B,32,32,32) -> (B,64,16,16) -> (B,128,8,8) -> (B,256,4,4) -> (B,4096)

and the decoder mirrors it from a dense layer to a ``(B,256,4,4)`` grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dreamlab.models import actions_to_tensor, foreground_weights, frames_to_tensor

__all__ = [
    "RSSM",
    "RSSM_PRESETS",
    "RSSMConfig",
    "RSSMSequence",
    "TwoHot",
    "rssm_preset",
    "symexp",
    "symlog",
]


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)``: compresses large magnitudes, identity near 0."""
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`."""
    return torch.sign(x) * torch.expm1(x.abs())


class TwoHot(nn.Module):
    """Two-hot encoding over evenly spaced bins in symlog space (DreamerV3's reward/value head).

    A scalar target ``y`` is written as weights on the two bins around ``symlog(y)``; the
    prediction is ``symexp(sum_k softmax(logits)_k * bin_k)``.

    Args:
        num_bins: number of bins (odd, so that 0 is a bin).
        limit: bins span ``[-limit, limit]`` in symlog space (20 covers |y| up to ~5e8).
    """

    def __init__(self, num_bins: int, limit: float = 20.0) -> None:
        super().__init__()
        self.register_buffer("bins", torch.linspace(-limit, limit, num_bins), persistent=False)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value ``(...)`` of logits ``(..., K)``."""
        probs = torch.softmax(logits, dim=-1)
        return symexp((probs * self.bins).sum(-1))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy ``(...)`` between logits ``(..., K)`` and the two-hot of ``target (...)``."""
        bins: torch.Tensor = self.bins
        y = symlog(target).clamp(bins[0], bins[-1])  # (...)
        above = torch.searchsorted(bins, y.contiguous(), right=False).clamp(1, len(bins) - 1)
        below = above - 1
        lo, hi = bins[below], bins[above]
        w_hi = ((y - lo) / (hi - lo)).clamp(0.0, 1.0)  # (...)
        logp = torch.log_softmax(logits, dim=-1)  # (..., K)
        lp_lo = logp.gather(-1, below.unsqueeze(-1)).squeeze(-1)
        lp_hi = logp.gather(-1, above.unsqueeze(-1)).squeeze(-1)
        return -((1.0 - w_hi) * lp_lo + w_hi * lp_hi)


@dataclass
class RSSMConfig:
    """Hyperparameters of the RSSM world model. Presets: :data:`RSSM_PRESETS`."""

    frame_size: int = 64
    """height = width of the square frames (a power of two, >= 8)"""
    action_kind: Literal["discrete", "continuous"] = "continuous"
    """env action space: 'discrete' (indices, one-hot inside) or 'continuous' (a 1-D Box)"""
    action_dim: int = 1
    """number of discrete actions, or size of the continuous action vector"""
    deter: int = 512
    """size of the GRU memory h"""
    stoch: int = 32
    """number of categorical latent variables S"""
    classes: int = 32
    """classes K per latent variable (z is S*K one-hot values)"""
    hidden: int = 512
    """width of every MLP layer (dynamics input, posterior, prior, heads)"""
    cnn_depth: int = 32
    """channels of the first conv; doubled per stride-2 layer down to a 4x4 grid"""
    unimix: float = 0.01
    """fraction of uniform probability mixed into every categorical (no class ever has p=0)"""
    free_nats: float = 1.0
    """KL below this many nats (per step, summed over variables) is not penalised"""
    dyn_scale: float = 0.5
    """weight of KL(sg(posterior) || prior): trains the prior to predict"""
    rep_scale: float = 0.1
    """weight of KL(posterior || sg(prior)): keeps representations predictable"""
    reward_bins: int = 255
    """bins of the two-hot reward head"""
    reward_scale: float = 1.0
    """weight of the reward loss"""
    cont_scale: float = 1.0
    """weight of the continuation loss"""
    image_scale: float = 1.0
    """weight of the image reconstruction loss"""
    foreground_weight: float = 0.0
    """extra image-loss weight on pixels unlike the frame's median colour (tiny objects)"""
    foreground_threshold: float = 0.1
    """a pixel is foreground when a channel differs from the frame's median colour by this much"""

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(f"RSSMConfig.{name}={getattr(self, name)!r}: expected {expected}")

        size = self.frame_size
        need(
            isinstance(size, int) and size >= 8 and size & (size - 1) == 0,
            "frame_size",
            "a power of two >= 8",
        )
        need(self.action_kind in ("discrete", "continuous"), "action_kind", "discrete|continuous")
        for name in ("action_dim", "deter", "stoch", "classes", "hidden", "cnn_depth"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.classes >= 2, "classes", ">= 2")
        need(0.0 <= self.unimix < 1.0, "unimix", "in [0, 1)")
        need(self.free_nats >= 0, "free_nats", ">= 0")
        need(self.reward_bins >= 3 and self.reward_bins % 2 == 1, "reward_bins", "odd and >= 3")
        need(self.foreground_weight >= 0, "foreground_weight", ">= 0")

    @property
    def stoch_dim(self) -> int:
        """Size of the flattened one-hot latent ``S * K``."""
        return self.stoch * self.classes

    @property
    def feature_dim(self) -> int:
        """Size of the features ``[h, z]``: ``D + S * K``."""
        return self.deter + self.stoch_dim

    @property
    def num_convs(self) -> int:
        """Stride-2 convs from ``frame_size`` down to a 4x4 grid."""
        return max(1, int(math.log2(self.frame_size // 4)))


RSSM_PRESETS: dict[str, RSSMConfig] = {
    # CPU: ~0.1 s per update of 16 x 32 frames at 32x32 on one core.
    "tiny": RSSMConfig(deter=128, stoch=8, classes=8, hidden=128, cnn_depth=16, reward_bins=63),
    "small": RSSMConfig(deter=256, stoch=16, classes=16, hidden=256, cnn_depth=24),
    # The sizes of DreamerV3's "S" model (GRU 512, MLPs 512, CNN depth 32, 32x32 latents).
    "dreamerv3-s": RSSMConfig(deter=512, stoch=32, classes=32, hidden=512, cnn_depth=32),
}
"""Named sizes; :func:`rssm_preset` fills in the frame size and action space."""


def rssm_preset(
    name: str,
    *,
    frame_size: int = 64,
    action_kind: Literal["discrete", "continuous"] = "continuous",
    action_dim: int = 1,
) -> RSSMConfig:
    """A copy of preset ``name`` for frames of ``frame_size`` and the given action space."""
    if name not in RSSM_PRESETS:
        raise ValueError(f"unknown RSSM preset {name!r}; known: {', '.join(RSSM_PRESETS)}")
    return replace(
        RSSM_PRESETS[name], frame_size=frame_size, action_kind=action_kind, action_dim=action_dim
    )


def _mlp(inp: int, hidden: int, out: int, layers: int = 1) -> nn.Sequential:
    """``layers`` x (Linear + LayerNorm + SiLU) then a Linear to ``out``."""
    mods: list[nn.Module] = []
    width = inp
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.SiLU()]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)


@dataclass
class RSSMSequence:
    """What :meth:`RSSM.observe_sequence` returns for a batch of ``T`` observations."""

    deter: torch.Tensor
    """``(B, T, D)`` GRU memory"""
    stoch: torch.Tensor
    """``(B, T, S*K)`` posterior samples (straight-through one-hot)"""
    post_logits: torch.Tensor
    """``(B, T, S, K)`` posterior logits (after the uniform mix)"""
    prior_logits: torch.Tensor
    """``(B, T, S, K)`` prior logits (after the uniform mix)"""

    @property
    def features(self) -> torch.Tensor:
        """``(B, T, D + S*K)``."""
        return torch.cat([self.deter, self.stoch], dim=-1)


class RSSM(nn.Module):
    """Encoder, recurrent dynamics with categorical latents, decoder, reward and continuation."""

    def __init__(self, config: RSSMConfig) -> None:
        super().__init__()
        self.config = c = config
        # --- encoder: stride-2 4x4 convs down to a 4x4 grid
        enc: list[nn.Module] = []
        ch_in, ch = 3, c.cnn_depth
        for _ in range(c.num_convs):
            enc += [nn.Conv2d(ch_in, ch, 4, 2, 1), nn.GroupNorm(1, ch), nn.SiLU()]
            ch_in, ch = ch, ch * 2
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.grid_channels = ch_in
        self.embed_dim = ch_in * 4 * 4
        # --- decoder: features -> 4x4 grid -> stride-2 deconvs up to the frame
        self.dec_in = nn.Linear(c.feature_dim, self.embed_dim)
        dec: list[nn.Module] = []
        ch = ch_in
        for i in range(c.num_convs):
            last = i == c.num_convs - 1
            out = 3 if last else ch // 2
            dec.append(nn.ConvTranspose2d(ch, out, 4, 2, 1))
            if not last:
                dec += [nn.GroupNorm(1, out), nn.SiLU()]
            ch = out
        self.decoder = nn.Sequential(*dec)
        # --- dynamics
        self.img_in = nn.Sequential(
            nn.Linear(c.stoch_dim + c.action_dim, c.hidden), nn.LayerNorm(c.hidden), nn.SiLU()
        )
        self.gru = nn.GRUCell(c.hidden, c.deter)
        self.prior_net = _mlp(c.deter, c.hidden, c.stoch_dim)
        self.post_net = _mlp(c.deter + self.embed_dim, c.hidden, c.stoch_dim)
        # --- heads
        self.reward_net = _mlp(c.feature_dim, c.hidden, c.reward_bins, layers=2)
        self.cont_net = _mlp(c.feature_dim, c.hidden, 1, layers=2)
        # A zero reward head predicts 0 at the start instead of random large rewards (DreamerV3).
        nn.init.zeros_(self.reward_net[-1].weight)
        nn.init.zeros_(self.reward_net[-1].bias)
        self.twohot = TwoHot(c.reward_bins)

    # ------------------------------------------------------------------ pieces
    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env actions ``(..., )`` int indices or ``(..., A)`` floats -> float ``(..., A)``."""
        c = self.config
        if c.action_kind == "discrete":
            if action.is_floating_point():
                if action.shape[-1:] == (c.action_dim,):  # already one-hot
                    return action.float()
                action = action.round().long()
            return actions_to_tensor(action.long(), "discrete", c.action_dim)
        return actions_to_tensor(action.float(), "continuous", c.action_dim)

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames ``(N, 3, H, W)`` in ``[0, 1]`` -> embeddings ``(N, E)``."""
        size = self.config.frame_size
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (3, size, size):
            raise ValueError(
                f"RSSM: expected frames of shape (N, 3, {size}, {size}), got {tuple(frames.shape)}"
            )
        return self.encoder(frames - 0.5)

    def decode_features(self, features: torch.Tensor) -> torch.Tensor:
        """Features ``(N, F)`` -> predicted frames ``(N, 3, H, W)`` (unclamped, ~[0, 1])."""
        x = self.dec_in(features).view(-1, self.grid_channels, 4, 4)  # (N, C, 4, 4)
        return self.decoder(x) + 0.5  # (N, 3, H, W)

    def _mix(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., S*K)`` -> log-probabilities ``(..., S, K)`` with the uniform mix."""
        c = self.config
        logits = logits.view(*logits.shape[:-1], c.stoch, c.classes)
        if c.unimix <= 0:
            return torch.log_softmax(logits, -1)
        probs = torch.softmax(logits, -1) * (1.0 - c.unimix) + c.unimix / c.classes
        return torch.log(probs)

    def sample_stoch(
        self,
        logits: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One-hot samples ``(..., S*K)`` of mixed log-probs ``(..., S, K)``, straight-through.

        ``temperature`` divides the logits; 0 takes each variable's most likely class.
        """
        probs = logits.exp()  # (..., S, K)
        if temperature == 0:
            index = logits.argmax(-1)
        else:
            tempered = torch.softmax(logits / temperature, -1) if temperature != 1.0 else probs
            flat = tempered.reshape(-1, tempered.shape[-1])
            index = torch.multinomial(flat, 1, generator=generator).view(tempered.shape[:-1])
        onehot = F.one_hot(index, logits.shape[-1]).to(probs.dtype)  # (..., S, K)
        onehot = onehot + probs - probs.detach()
        return onehot.flatten(-2)

    def img_step(
        self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor
    ) -> torch.Tensor:
        """GRU memory update: ``h' = GRU(h, [z, a])``; all ``(B, .)`` -> ``(B, D)``."""
        return self.gru(self.img_in(torch.cat([stoch, action], -1)), deter)

    def prior_logits(self, deter: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` -> mixed prior log-probs ``(B, S, K)``."""
        return self._mix(self.prior_net(deter))

    def post_logits(self, deter: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        """``(B, D)``, ``(B, E)`` -> mixed posterior log-probs ``(B, S, K)``."""
        return self._mix(self.post_net(torch.cat([deter, embed], -1)))

    def reward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted reward ``(...)`` from features ``(..., F)``."""
        return self.twohot.mean(self.reward_net(features))

    def cont_logit(self, features: torch.Tensor) -> torch.Tensor:
        """Logit ``(...)`` of "the episode continues" from features ``(..., F)``."""
        return self.cont_net(features).squeeze(-1)

    # ------------------------------------------------------------------ sequences
    def observe_sequence(self, frames: torch.Tensor, actions: torch.Tensor) -> RSSMSequence:
        """Filter a batch of sequences with the posterior.

        Args:
            frames: ``(B, T+1, 3, H, W)`` in ``[0, 1]``.
            actions: encoded actions ``(B, T, A)``; ``actions[:, t]`` leads from frame t to t+1.
        """
        batch, steps = frames.shape[:2]
        c = self.config
        embed = self.embed(frames.flatten(0, 1)).view(batch, steps, -1)  # (B, T+1, E)
        deter = frames.new_zeros(batch, c.deter)
        stoch = frames.new_zeros(batch, c.stoch_dim)
        deters, stochs, posts, priors = [], [], [], []
        for t in range(steps):
            if t > 0:
                deter = self.img_step(deter, stoch, actions[:, t - 1])  # (B, D)
            prior = self.prior_logits(deter)  # (B, S, K)
            post = self.post_logits(deter, embed[:, t])  # (B, S, K)
            stoch = self.sample_stoch(post)  # (B, S*K)
            deters.append(deter)
            stochs.append(stoch)
            posts.append(post)
            priors.append(prior)
        return RSSMSequence(
            torch.stack(deters, 1),
            torch.stack(stochs, 1),
            torch.stack(posts, 1),
            torch.stack(priors, 1),
        )

    def kl_terms(self, seq: RSSMSequence) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dyn, rep)`` KL per step ``(B, T)``, summed over latent variables (nats)."""
        post, prior = seq.post_logits, seq.prior_logits

        def kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
            return (lp.exp() * (lp - lq)).sum(-1).sum(-1)

        dyn = kl(post.detach(), prior)
        rep = kl(post, prior.detach())
        return dyn, rep

    def image_weights(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-pixel loss weights ``(N, 1, H, W)``: ``1 + foreground_weight`` on foreground."""
        c = self.config
        return foreground_weights(frames, c.foreground_weight, c.foreground_threshold)

    def compute_loss(
        self, batch: dict[str, torch.Tensor], *, return_sequence: bool = False
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """World-model loss on a batch of windows.

        Args:
            batch: ``obs (B, T+1, H, W, 3) uint8``, ``action (B, T[, A])``, ``reward (B, T)``,
                ``terminated (B, T)`` bool.
            return_sequence: also return the posterior sequence (the actor-critic's start
                states) as ``metrics["_sequence"]`` (not a float; removed by callers).

        Returns:
            ``(loss, metrics)``: loss per step (averaged over batch and time).
        """
        c = self.config
        for key in ("obs", "action", "reward", "terminated"):
            if key not in batch:
                raise ValueError(f"RSSM.compute_loss: batch needs key {key!r}, got {sorted(batch)}")
        frames = frames_to_tensor(batch["obs"])  # (B, T+1, 3, H, W)
        actions = self.encode_action(batch["action"])  # (B, T, A)
        reward = batch["reward"].float()  # (B, T)
        cont = 1.0 - batch["terminated"].float()  # (B, T)
        seq = self.observe_sequence(frames, actions)
        feats = seq.features  # (B, T+1, F)

        recon = self.decode_features(feats.flatten(0, 1))  # (B*(T+1), 3, H, W)
        target = frames.flatten(0, 1)
        sq = (recon - target).pow(2)
        if c.foreground_weight > 0:
            sq = sq * self.image_weights(target)
        image = sq.sum((-3, -2, -1)).mean()
        reward_loss = self.twohot.loss(self.reward_net(feats[:, 1:]), reward).mean()
        cont_loss = F.binary_cross_entropy_with_logits(self.cont_logit(feats[:, 1:]), cont)
        dyn, rep = self.kl_terms(seq)
        dyn_loss = dyn.clamp(min=c.free_nats).mean()
        rep_loss = rep.clamp(min=c.free_nats).mean()
        loss = (
            c.image_scale * image
            + c.reward_scale * reward_loss
            + c.cont_scale * cont_loss
            + c.dyn_scale * dyn_loss
            + c.rep_scale * rep_loss
        )
        with torch.no_grad():
            pred_r = self.reward(feats[:, 1:])
            metrics: dict = {
                "loss": float(loss),
                "image": float(image),
                "reward": float(reward_loss),
                "cont": float(cont_loss),
                "kl_dyn": float(dyn.mean()),
                "kl_rep": float(rep.mean()),
                "reward_mae": float((pred_r - reward).abs().mean()),
                "pixel_mse": float((recon.clamp(0, 1) - target).pow(2).mean()),
            }
        if return_sequence:
            metrics["_sequence"] = seq
        return loss, metrics
