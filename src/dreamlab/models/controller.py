"""The controller C of Ha & Schmidhuber (2018): a tiny policy from world-model features to actions.

C is deliberately small (867 parameters for CarRacing: ``[z, h]`` of size 32 + 256 -> 3 actions)
so that a derivative-free optimizer (CMA-ES) can search its weights directly. Besides the usual
``forward`` this module offers the two things CMA-ES needs:

- ``get_flat_params`` / ``set_flat_params``: the weights as one vector, in the order of
  ``parameters()``;
- ``population_forward``: P candidate weight vectors applied to P x R feature rows with one
  batched matmul (``torch.baddbmm``), so a whole population acts in a batched dream as a single
  tensor computation.

Only torch is imported here (models layer); action spaces are read duck-typed (``.n`` for
discrete, ``.low`` / ``.high`` for boxes) so gymnasium spaces work without importing gymnasium.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn

ActionMapping = Literal["box", "carracing", "discrete"]


@dataclass
class ControllerConfig:
    """Shape and action mapping of the controller C."""

    feature_dim: int = 288
    """size of the input features F (V+M: z_dim + hidden_size, e.g. 32 + 256)"""
    action_dim: int = 3
    """number of outputs: the action size for boxes, the number of choices for discrete spaces"""
    mapping: ActionMapping = "carracing"
    """how tanh outputs become actions: 'box' (affine to low/high), 'carracing', or 'discrete'"""
    action_low: list[float] = field(default_factory=list)
    """per-dimension lower bound for mapping='box' (ignored otherwise)"""
    action_high: list[float] = field(default_factory=list)
    """per-dimension upper bound for mapping='box' (ignored otherwise)"""
    hidden_size: int = 0
    """0 = the paper's single linear layer; >0 adds one tanh hidden layer of this size"""
    inputs: Literal["zh", "z"] = "zh"
    """which world-model features C reads: 'zh' = [z, h] (full V+M), 'z' = V-only ablation"""
    input_mean: list[float] = field(default_factory=list)
    """per-feature offset subtracted before C's first layer (empty = none); with input_std, C
    sees standardized features, so one CMA-ES step size fits every weight"""
    input_std: list[float] = field(default_factory=list)
    """per-feature scale (> 0) features are divided by after input_mean (empty = none)"""

    def __post_init__(self) -> None:
        if self.feature_dim <= 0 or self.action_dim <= 0:
            raise ValueError(
                f"ControllerConfig: feature_dim and action_dim must be > 0, got "
                f"{self.feature_dim} and {self.action_dim}"
            )
        if self.hidden_size < 0:
            raise ValueError(f"ControllerConfig.hidden_size must be >= 0, got {self.hidden_size}")
        if self.mapping not in ("box", "carracing", "discrete"):
            raise ValueError(
                f"ControllerConfig.mapping must be 'box', 'carracing' or 'discrete', got "
                f"{self.mapping!r}"
            )
        if self.inputs not in ("zh", "z"):
            raise ValueError(f"ControllerConfig.inputs must be 'zh' or 'z', got {self.inputs!r}")
        if bool(self.input_mean) != bool(self.input_std):
            raise ValueError(
                "ControllerConfig: input_mean and input_std must be given together, got "
                f"{len(self.input_mean)} and {len(self.input_std)} values"
            )
        if self.input_mean:
            if len(self.input_mean) != self.feature_dim or len(self.input_std) != self.feature_dim:
                raise ValueError(
                    f"ControllerConfig: input_mean/input_std need feature_dim={self.feature_dim} "
                    f"values each, got {len(self.input_mean)} and {len(self.input_std)}"
                )
            if not all(math.isfinite(v) for v in self.input_mean) or not all(
                math.isfinite(v) and v > 0 for v in self.input_std
            ):
                raise ValueError(
                    "ControllerConfig: input_mean must be finite and input_std finite and > 0"
                )
        if self.mapping == "carracing" and self.action_dim != 3:
            raise ValueError(
                f"ControllerConfig: mapping='carracing' needs action_dim=3 (steer, gas, brake), "
                f"got {self.action_dim}"
            )
        if self.mapping == "box":
            low, high = list(self.action_low), list(self.action_high)
            if len(low) != self.action_dim or len(high) != self.action_dim:
                raise ValueError(
                    f"ControllerConfig: mapping='box' needs action_low/action_high of length "
                    f"action_dim={self.action_dim}, got {len(low)} and {len(high)}"
                )
            if not all(math.isfinite(v) for v in low + high):
                raise ValueError(
                    "ControllerConfig: mapping='box' needs finite action bounds, got "
                    f"low={low}, high={high}"
                )
            if any(lo >= hi for lo, hi in zip(low, high, strict=True)):
                raise ValueError(
                    f"ControllerConfig: action_low must be < action_high, got {low} / {high}"
                )

    @classmethod
    def from_action_space(
        cls,
        feature_dim: int,
        action_space: Any,
        *,
        mapping: ActionMapping | Literal["auto"] = "auto",
        hidden_size: int = 0,
        inputs: Literal["zh", "z"] = "zh",
    ) -> ControllerConfig:
        """Build a config for a gymnasium-like action space.

        Args:
            feature_dim: size F of the features the controller reads.
            action_space: a ``Discrete`` (has ``.n``) or a 1-D ``Box`` (has ``.low`` / ``.high``).
            mapping: 'auto' picks 'discrete' for discrete spaces and 'box' otherwise; pass
                'carracing' for the paper's steer/gas/brake mapping.
            hidden_size: see :attr:`hidden_size`.
            inputs: see :attr:`inputs`.
        """
        if hasattr(action_space, "n"):
            if mapping not in ("auto", "discrete"):
                raise ValueError(
                    f"mapping={mapping!r} does not fit a discrete action space {action_space}"
                )
            return cls(feature_dim, int(action_space.n), "discrete", [], [], hidden_size, inputs)
        if not (hasattr(action_space, "low") and hasattr(action_space, "high")):
            raise ValueError(
                f"action space {action_space!r}: expected Discrete (with .n) or Box (with .low/.high)"
            )
        shape = tuple(action_space.shape)
        if len(shape) != 1:
            raise ValueError(f"action space {action_space}: only 1-D Box actions are supported")
        low = [float(v) for v in action_space.low]
        high = [float(v) for v in action_space.high]
        chosen: ActionMapping = "box" if mapping == "auto" else mapping
        if chosen == "discrete":
            raise ValueError(f"mapping='discrete' does not fit a Box action space {action_space}")
        return cls(feature_dim, shape[0], chosen, low, high, hidden_size, inputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)

    @property
    def normalizes_inputs(self) -> bool:
        """Whether C standardizes its features with ``input_mean`` / ``input_std``."""
        return bool(self.input_mean)


class Controller(nn.Module):
    """C: features ``(B, F)`` -> action, linear (paper) or with one tanh hidden layer.

    Continuous mappings return float actions ``(B, A)``; the discrete mapping returns the argmax
    index ``(B,)`` as int64.
    """

    def __init__(self, config: ControllerConfig) -> None:
        super().__init__()
        self.config = config
        out = config.action_dim
        if config.hidden_size > 0:
            self.hidden: nn.Linear | None = nn.Linear(config.feature_dim, config.hidden_size)
            self.out = nn.Linear(config.hidden_size, out)
        else:
            self.hidden = None
            self.out = nn.Linear(config.feature_dim, out)
        if config.normalizes_inputs:
            # Buffers, not parameters: CMA-ES searches the weights only; the values live in the
            # config, so a checkpoint's config.json alone rebuilds them.
            self.register_buffer("input_mean", torch.tensor(config.input_mean, dtype=torch.float32))
            self.register_buffer("input_std", torch.tensor(config.input_std, dtype=torch.float32))
        if config.mapping == "box":
            self.register_buffer("action_low", torch.tensor(config.action_low, dtype=torch.float32))
            self.register_buffer(
                "action_high", torch.tensor(config.action_high, dtype=torch.float32)
            )

    # ---------------------------------------------------------------- single controller
    def raw(self, features: torch.Tensor) -> torch.Tensor:
        """Pre-mapping outputs ``(B, A)`` (logits for discrete) of features ``(B, F)``."""
        self._check_features(features)
        x = self.normalize(features)  # (B, F)
        if self.hidden is not None:
            x = torch.tanh(self.hidden(x))  # (B, H_c)
        return self.out(x)  # (B, A)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Actions for features ``(B, F)``: ``(B, A)`` float, or ``(B,)`` int64 when discrete."""
        return self.map_action(self.raw(features))

    def map_action(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw outputs ``(..., A)`` to actions ``(..., A)`` (``(...)`` int64 for discrete)."""
        mapping = self.config.mapping
        if mapping == "discrete":
            return raw.argmax(dim=-1)  # (...)
        t = torch.tanh(raw)  # (..., A) in (-1, 1)
        if mapping == "carracing":
            # The paper's CarRacing mapping: gas may not be negative and brake only engages when
            # its output is positive, which keeps a random C driving instead of braking half the time.
            steer = t[..., 0]
            gas = (t[..., 1] + 1.0) / 2.0
            brake = t[..., 2].clamp(min=0.0)
            return torch.stack([steer, gas, brake], dim=-1)  # (..., 3)
        low = cast(torch.Tensor, self.action_low).to(t.dtype)  # (A,)
        high = cast(torch.Tensor, self.action_high).to(t.dtype)  # (A,)
        return low + (t + 1.0) * 0.5 * (high - low)  # (..., A)

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """Standardized features ``(..., F)`` (unchanged without ``input_mean``/``input_std``)."""
        if not self.config.normalizes_inputs:
            return features
        mean = cast(torch.Tensor, self.input_mean).to(features.dtype)  # (F,)
        std = cast(torch.Tensor, self.input_std).to(features.dtype)  # (F,)
        return (features - mean) / std

    def _check_features(self, features: torch.Tensor) -> None:
        if features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"Controller expected features of size {self.config.feature_dim} in the last "
                f"dimension (inputs={self.config.inputs!r}), got shape {tuple(features.shape)}"
            )

    # ---------------------------------------------------------------- flat parameters
    @property
    def num_params(self) -> int:
        """Number of trainable parameters D (the CMA-ES search dimension)."""
        return sum(p.numel() for p in self.parameters())

    def get_flat_params(self) -> torch.Tensor:
        """All weights as one float32 vector ``(D,)``, in ``parameters()`` order."""
        return torch.nn.utils.parameters_to_vector(self.parameters()).detach().float().clone()

    def set_flat_params(self, flat: torch.Tensor | Any) -> None:
        """Load weights from a vector ``(D,)`` (tensor or array) in ``parameters()`` order."""
        vec = torch.as_tensor(flat, dtype=torch.float32).flatten()
        if vec.numel() != self.num_params:
            raise ValueError(
                f"Controller.set_flat_params: expected {self.num_params} values, got {vec.numel()}"
            )
        ref = next(self.parameters())
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(vec.to(ref.device, ref.dtype), self.parameters())

    # ---------------------------------------------------------------- population form
    def population_raw(self, params: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Raw outputs of P candidate controllers, each on its own R feature rows.

        Args:
            params: ``(P, D)`` flat weight vectors, same layout as :meth:`get_flat_params`.
            features: ``(P, R, F)``: row ``[p, r]`` is what candidate p sees in rollout r.

        Returns:
            ``(P, R, A)`` pre-mapping outputs; candidate p's weights applied to ``features[p]``.
        """
        cfg = self.config
        if params.ndim != 2 or params.shape[1] != self.num_params:
            raise ValueError(
                f"population params must be (P, {self.num_params}), got {tuple(params.shape)}"
            )
        if features.ndim != 3 or features.shape[0] != params.shape[0]:
            raise ValueError(
                f"population features must be (P={params.shape[0]}, R, F), got "
                f"{tuple(features.shape)}"
            )
        self._check_features(features)
        params = params.to(features.dtype)
        num_candidates = params.shape[0]
        offset = 0

        def take(*shape: int) -> torch.Tensor:
            nonlocal offset
            n = math.prod(shape)
            chunk = params[:, offset : offset + n].reshape(num_candidates, *shape)
            offset += n
            return chunk

        x = self.normalize(features)  # (P, R, F)
        if cfg.hidden_size > 0:
            w1 = take(cfg.hidden_size, cfg.feature_dim)  # (P, H_c, F)
            b1 = take(cfg.hidden_size)  # (P, H_c)
            x = torch.tanh(torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2)))  # (P, R, H_c)
        in_dim = x.shape[-1]
        w = take(cfg.action_dim, in_dim)  # (P, A, in)
        b = take(cfg.action_dim)  # (P, A)
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))  # (P, R, A)

    def population_forward(self, params: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Actions of P candidates on ``(P, R, F)`` features: ``(P, R, A)`` or ``(P, R)`` int64."""
        return self.map_action(self.population_raw(params, features))
