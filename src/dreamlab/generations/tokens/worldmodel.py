"""The token world model (VQ tokenizer + causal transformer) behind the ``WorldModel`` protocol.

State (batch-first; ``G`` = 2 branches with classifier-free guidance, else 1)::

    tokens    (B, W, L) int64   the window of the last W blocks [prompt, f_1..f_N, action]
    nblocks   (B,)      int64   blocks in the window; the last one is *open* (no action yet)
    has_frames(B,)      bool    whether the open block holds its frame tokens
    prompt    (B,)      int64   prompt bit mask written into every new block
    k, v      (B, G, layers, heads, W*L, head_dim)   KV cache (branch 1: prompts removed)
    fill      (B, G)    int64   cached positions per row and branch
    hidden    (B, D)    float   transformer output at the open block's last frame token

- ``observe``: tokenize the real frame into the open block (replacing imagined tokens there).
- ``step``: append the action (reward and termination are read at it), the next block's prompt,
  then sample the N frame tokens one by one with the KV cache (temperature, top-k, guidance).
- When the window is full (W blocks), the last ``keep_steps`` blocks are re-encoded into a fresh
  cache (IRIS does the same); the temporal positions restart at 0, as in training windows.
- ``features``: ``[z_q, h]``: the current frame's code vectors, flattened (what the decoder sees,
  ``N * code_dim``), and the transformer's hidden state at its last token (``d_model``, carrying
  the history: velocities, the prompt). The analogue of ``[z, h]`` in World Models.
- ``decode``: the VQ decoder on the open block's frame tokens.

The cache is written in place beyond each state's ``fill``: states are linear (step a state once;
to branch, copy the state's tensors first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from dreamlab.checkpoint import register_model
from dreamlab.envs.scenarios import parse_prompt, prompt_mask
from dreamlab.models import frames_to_tensor
from dreamlab.models.tokens import TokenTransformer, TokenTransformerConfig, sample_logits
from dreamlab.models.vq import VQConfig, VQTokenizer
from dreamlab.worldmodel import ActionSpec, StartLatents, State

__all__ = ["TokenWorldModel", "action_tokens", "token_start_bank"]

register_model("vq", VQConfig, VQTokenizer)
register_model("token_transformer", TokenTransformerConfig, TokenTransformer)


def action_tokens(action: Any, spec: ActionSpec, bins: int) -> torch.Tensor:
    """Env actions -> action token ids ``(...)``: discrete indices as they are; a 1-D Box is
    cut into ``bins`` uniform bins over its bounds."""
    a = torch.as_tensor(np.asarray(action) if not isinstance(action, torch.Tensor) else action)
    if spec.kind == "discrete":
        a = a.long()
        return a[..., 0] if a.dim() > 1 else a
    if spec.n != 1:
        raise ValueError(f"token world model: a Box action must be 1-D (n=1), got n={spec.n}")
    low, high = spec.low[0], spec.high[0]
    unit = (a.float().squeeze(-1) - low) / (high - low)
    return (unit.clamp(0, 1) * (bins - 1)).round().long()


def token_to_action(tokens: torch.Tensor, spec: ActionSpec, bins: int) -> torch.Tensor:
    """Inverse of :func:`action_tokens`: ids ``(B,)`` -> env actions (``(B,)`` or ``(B, 1)``)."""
    if spec.kind == "discrete":
        return tokens.long()
    low, high = spec.low[0], spec.high[0]
    return (low + tokens.float() / (bins - 1) * (high - low))[:, None]


class TokenWorldModel:
    """A VQ tokenizer and a token transformer as a :class:`~dreamlab.worldmodel.WorldModel`.

    Args:
        tokenizer: the trained VQ tokenizer.
        transformer: the trained transformer (its ``tokens_per_frame``/``vocab_size`` must match).
        action_space: the env's action space (Discrete, or a 1-D Box binned into
            ``transformer.config.action_tokens`` bins).
        prompt: words every new block carries (see :meth:`set_prompt`).
        guidance: classifier-free guidance scale (1 = plain conditional sampling).
        top_k: sample frame tokens among the k most likely (0 = all).
        keep_steps: blocks kept when a full window is re-encoded (default half the window).
    """

    def __init__(
        self,
        tokenizer: VQTokenizer,
        transformer: TokenTransformer,
        action_space: ActionSpec | Any,
        *,
        prompt: str | Sequence[str] | None = None,
        guidance: float = 1.0,
        top_k: int = 0,
        keep_steps: int | None = None,
    ) -> None:
        tc, vc = transformer.config, tokenizer.config
        if tc.tokens_per_frame != vc.tokens_per_frame or tc.vocab_size != vc.codebook_size:
            raise ValueError(
                f"TokenWorldModel: the transformer reads {tc.tokens_per_frame} tokens of "
                f"{tc.vocab_size} codes, the tokenizer makes {vc.tokens_per_frame} of "
                f"{vc.codebook_size}"
            )
        spec = ActionSpec.from_space(action_space)
        if spec.kind == "discrete" and spec.n != tc.action_tokens:
            raise ValueError(
                f"TokenWorldModel: Discrete({spec.n}) actions, the transformer has "
                f"{tc.action_tokens} action tokens"
            )
        self.tokenizer = tokenizer.eval()
        self.transformer = transformer.eval()
        self.action_spec = spec
        self.top_k = int(top_k)
        self.window = tc.context_steps
        self.keep_steps = keep_steps if keep_steps is not None else max(1, self.window // 2)
        if not 1 <= self.keep_steps < self.window:
            raise ValueError(
                f"TokenWorldModel: keep_steps must be in [1, {self.window - 1}], got {keep_steps}"
            )
        self.code_dim = vc.code_dim
        self.n_tokens = tc.tokens_per_frame
        self.action_dim = spec.n
        self.feature_dim = self.n_tokens * self.code_dim + tc.d_model
        self.prompt_words = tc.prompt_words
        self.prompt = 0
        self.guidance = 1.0
        self.set_prompt(prompt, guidance)

    # ------------------------------------------------------------------ settings
    def set_prompt(self, prompt: str | Sequence[str] | None, guidance: float = 1.0) -> None:
        """Words for every new block, and the guidance scale; ``None`` = no words.

        Raises:
            ValueError: a word outside the model's vocabulary, or a prompt for a model trained
                without prompts (the message lists the vocabulary).
        """
        words = parse_prompt(prompt, self.prompt_words)
        if guidance < 0:
            raise ValueError(f"TokenWorldModel: guidance must be >= 0, got {guidance}")
        self.prompt = prompt_mask(words, self.prompt_words) if words else 0
        self.guidance = float(guidance)

    @property
    def branches(self) -> int:
        """2 when sampling uses classifier-free guidance, else 1."""
        return 2 if self.prompt_words and self.guidance != 1.0 else 1

    @property
    def device(self) -> torch.device:
        """Where the models (and every state tensor) live."""
        return self.transformer.frame_head.weight.device

    def to(self, device: torch.device | str) -> TokenWorldModel:
        """Move both models to ``device``; returns self."""
        self.tokenizer.to(device)
        self.transformer.to(device)
        return self

    # ------------------------------------------------------------------ cache plumbing
    def _cache(self, state: State, rows: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """A (B*G)-row cache view of the state (or a copy of its ``rows``)."""
        k, v, fill = state["k"], state["v"], state["fill"]
        if rows is not None:
            k, v, fill = k[rows], v[rows], fill[rows]
        return {"k": k.flatten(0, 1), "v": v.flatten(0, 1), "fill": fill.view(-1)}

    def _feed(
        self,
        cache: dict[str, torch.Tensor],
        values: torch.Tensor,
        slots: torch.Tensor,
        steps: torch.Tensor,
    ) -> torch.Tensor:
        """Feed ``values (B, S)`` (prompt slots as the conditional branch has them) to every
        branch; returns hidden states ``(B, G, S, D)``."""
        g = self.branches
        vals = values[:, None].expand(-1, g, -1).clone()  # (B, G, S)
        if g == 2 and self.transformer.config.has_prompt:
            vals[:, 1] = torch.where(slots == 0, 0, vals[:, 1])
        s = values.shape[1]
        out = self.transformer(
            vals.flatten(0, 1),
            slots[:, None].expand(-1, g, -1).reshape(-1, s),
            steps[:, None].expand(-1, g, -1).reshape(-1, s),
            cache,
        )
        return out.view(values.shape[0], g, s, -1)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Guided frame-token logits ``(B, V)`` from hidden states ``(B, G, D)``."""
        logits = self.transformer.frame_logits(hidden).float()  # (B, G, V)
        if hidden.shape[1] == 1:
            return logits[:, 0]
        cond, uncond = logits[:, 0], logits[:, 1]
        return uncond + self.guidance * (cond - uncond)

    # ------------------------------------------------------------------ protocol
    @torch.inference_mode()
    def initial_state(self, batch_size: int) -> State:
        """An empty window whose first block holds only the prompt (frames come by observe)."""
        c = self.transformer.config
        dev, g = self.device, self.branches
        b = batch_size
        cache = self.transformer.new_cache(b * g, self.window * c.block_len, dev)
        state: State = {
            "tokens": torch.zeros(b, self.window, c.block_len, dtype=torch.long, device=dev),
            "nblocks": torch.ones(b, dtype=torch.long, device=dev),
            "has_frames": torch.zeros(b, dtype=torch.bool, device=dev),
            "prompt": torch.full((b,), self.prompt, dtype=torch.long, device=dev),
            "k": cache["k"].view(b, g, *cache["k"].shape[1:]),
            "v": cache["v"].view(b, g, *cache["v"].shape[1:]),
            "fill": cache["fill"].view(b, g),
            "hidden": torch.zeros(b, c.d_model, device=dev),
        }
        if c.has_prompt:
            state["tokens"][:, 0, 0] = state["prompt"]
            zeros = torch.zeros(b, 1, dtype=torch.long, device=dev)
            self._feed(self._cache(state), state["prompt"][:, None], zeros, zeros)
        return state

    @torch.inference_mode()
    def observe(
        self, state: State, frames: torch.Tensor, generator: torch.Generator | None = None
    ) -> State:
        """Put the tokens of real frames ``(B, 3, H, W)`` into the open block."""
        tokens = self.tokenizer.tokenize(frames.to(self.device))  # (B, N)
        return self.observe_tokens(state, tokens)

    @torch.inference_mode()
    def observe_tokens(self, state: State, tokens: torch.Tensor) -> State:
        """Like :meth:`observe` with already tokenized frames ``(B, N)``."""
        c = self.transformer.config
        b, n = tokens.shape
        state = dict(state)
        state["fill"] = state["fill"] - (state["has_frames"].long() * n)[:, None]
        open_idx = state["nblocks"] - 1  # (B,)
        rows = torch.arange(b, device=self.device)
        slots = torch.arange(c.frame_slot, c.frame_slot + n, device=self.device)
        tok = state["tokens"].clone()
        tok[rows[:, None], open_idx[:, None], slots[None]] = tokens.to(self.device)
        state["tokens"] = tok
        cache = self._cache(state)
        hidden = self._feed(
            cache, tokens.to(self.device), slots.expand(b, -1), open_idx[:, None].expand(-1, n)
        )
        state["fill"] = cache["fill"].view(b, -1)
        state["hidden"] = hidden[:, 0, -1].float()
        state["has_frames"] = torch.ones_like(state["has_frames"])
        return state

    def _rebuild(self, state: State, rows: torch.Tensor) -> None:
        """Re-encode the last ``keep_steps`` blocks of full ``rows`` into a fresh cache (in place)."""
        c = self.transformer.config
        keep, w = self.keep_steps, self.window
        tok = state["tokens"][rows, w - keep :]  # (R, keep, L)
        state["tokens"][rows] = torch.cat([tok, torch.zeros_like(state["tokens"][rows, keep:])], 1)
        seq = tok.reshape(len(rows), -1)[:, : keep * c.block_len - 1]  # (R, S)
        slots, steps = self.transformer.layout(keep, self.device)
        cache = self._cache(state, rows)
        cache["fill"].zero_()
        hidden = self._feed(cache, seq, slots.expand(len(rows), -1), steps.expand(len(rows), -1))
        g = self.branches
        state["k"][rows] = cache["k"].view(len(rows), g, *cache["k"].shape[1:])
        state["v"][rows] = cache["v"].view(len(rows), g, *cache["v"].shape[1:])
        state["fill"][rows] = cache["fill"].view(len(rows), g)
        state["hidden"][rows] = hidden[:, 0, -1].float()
        state["nblocks"][rows] = keep

    def _append_action(self, state: State, action: torch.Tensor) -> tuple[State, torch.Tensor]:
        """Close the open block with ``action``, open the next one (with its prompt).

        Returns the new state (frames not yet there) and hidden states ``(B, G, D)`` at the
        action token, plus as second element the hidden at the last fed position.
        """
        c = self.transformer.config
        if not bool(state["has_frames"].all()):
            raise RuntimeError("TokenWorldModel.step: the open block has no frame; observe first")
        state = {
            k: (v.clone() if k in ("tokens", "nblocks", "fill", "hidden") else v)
            for k, v in state.items()
        }
        full = (state["nblocks"] >= self.window).nonzero().squeeze(1)
        if full.numel():
            self._rebuild(state, full)
        b = action.shape[0]
        ids = action_tokens(action.to(self.device), self.action_spec, c.action_tokens)  # (B,)
        rows = torch.arange(b, device=self.device)
        last = state["nblocks"] - 1  # (B,)
        state["tokens"][rows, last, c.action_slot] = ids
        values = [ids[:, None]]
        slots = [torch.full((b, 1), c.action_slot, device=self.device)]
        steps = [last[:, None]]
        if c.has_prompt:
            state["tokens"][rows, last + 1, 0] = state["prompt"]
            values.append(state["prompt"][:, None])
            slots.append(torch.zeros(b, 1, dtype=torch.long, device=self.device))
            steps.append((last + 1)[:, None])
        cache = self._cache(state)
        hidden = self._feed(cache, torch.cat(values, 1), torch.cat(slots, 1), torch.cat(steps, 1))
        state["fill"] = cache["fill"].view(b, -1)
        state["nblocks"] = state["nblocks"] + 1
        state["has_frames"] = torch.zeros_like(state["has_frames"])
        return state, hidden

    @torch.inference_mode()
    def advance(self, state: State, action: torch.Tensor) -> State:
        """Append ``action`` and the next prompt without imagining the frame (the real-env agent
        loop: the next :meth:`observe` brings the real one)."""
        state, _ = self._append_action(state, action)
        return state

    @torch.inference_mode()
    def step(
        self,
        state: State,
        action: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[State, torch.Tensor, torch.Tensor]:
        """Imagine one step: ``(state', reward (B,) float32, terminated (B,) bool)``."""
        c = self.transformer.config
        state, hidden = self._append_action(state, action)
        h_act = hidden[:, 0, 0]  # (B, D) conditional branch at the action token
        reward = self.transformer.reward_value(h_act).float()
        terminated = self.transformer.termination_head(h_act).squeeze(-1) > 0.0
        b = action.shape[0]
        rows = torch.arange(b, device=self.device)
        block = state["nblocks"] - 1  # (B,)
        h = hidden[:, :, -1]  # (B, G, D)
        cache = self._cache(state)
        for j in range(self.n_tokens):
            tok = sample_logits(self._logits(h), temperature, self.top_k, generator)  # (B,)
            slot = c.frame_slot + j
            state["tokens"][rows, block, slot] = tok
            out = self._feed(
                cache,
                tok[:, None],
                torch.full((b, 1), slot, device=self.device),
                block[:, None],
            )
            h = out[:, :, -1]
        state["fill"] = cache["fill"].view(b, -1)
        state["hidden"] = h[:, 0].float()
        state["has_frames"] = torch.ones_like(state["has_frames"])
        return state, reward, terminated

    def frame_tokens(self, state: State) -> torch.Tensor:
        """Tokens ``(B, N)`` of the open block's frame."""
        c = self.transformer.config
        rows = torch.arange(state["tokens"].shape[0], device=state["tokens"].device)
        block = state["tokens"][rows, state["nblocks"] - 1]  # (B, L)
        return block[:, c.frame_slot : c.frame_slot + self.n_tokens]

    @torch.inference_mode()
    def decode(self, state: State) -> torch.Tensor:
        """Frames ``(B, 3, H, W)`` in ``[0, 1]``: the VQ decoder on the open block's tokens."""
        return self.tokenizer.decode_tokens(self.frame_tokens(state))

    def features(self, state: State) -> torch.Tensor:
        """``[z_q, h]`` ``(B, N * code_dim + d_model)`` (module docstring)."""
        z = self.tokenizer.codebook[self.frame_tokens(state)].flatten(1)  # (B, N*D)
        return torch.cat([z, state["hidden"]], -1)

    @torch.inference_mode()
    def start_state(self, start: StartLatents, generator: torch.Generator | None = None) -> State:
        """Begin dreams at rows ``{"tokens": (B, N)}`` of a start bank (real frames, tokenized)."""
        if "tokens" not in start:
            raise ValueError(
                "TokenWorldModel.start_state: the start bank needs key 'tokens' (B, N), got "
                f"{sorted(start)} (build it with dreamlab.generations.tokens.worldmodel.token_start_bank)"
            )
        tokens = start["tokens"].to(self.device).long()
        if tokens.shape[-1] != self.n_tokens:
            raise ValueError(
                f"TokenWorldModel.start_state: start tokens of size {tokens.shape[-1]}, the model "
                f"reads {self.n_tokens} per frame"
            )
        return self.observe_tokens(self.initial_state(tokens.shape[0]), tokens)


@torch.inference_mode()
def token_start_bank(
    world_model: TokenWorldModel,
    store: Any,
    *,
    frames: Literal["first", "all"] = "first",
    max_rows: int | None = None,
) -> StartLatents:
    """Dream start points from real episodes: ``{"tokens": (N, n_tokens)}`` int64 on the CPU.

    Args:
        world_model: the token world model (its tokenizer encodes the frames).
        store: an ``EpisodeStore`` of frames.
        frames: 'first' (each episode's first frame) or 'all' (every frame).
        max_rows: keep at most this many rows (evenly spaced).
    """
    rows = []
    for i in store.indices:
        ep: Mapping[str, np.ndarray] = store.episode(i)
        obs = np.asarray(ep["obs"][:1] if frames == "first" else ep["obs"])
        rows.append(world_model.tokenizer.tokenize(frames_to_tensor(obs, world_model.device)).cpu())
    if not rows:
        raise ValueError(f"{getattr(store, 'path', 'store')}: holds no episodes")
    tokens = torch.cat(rows)
    if max_rows is not None and len(tokens) > max_rows:
        keep = np.linspace(0, len(tokens) - 1, max_rows).round().astype(np.int64)
        tokens = tokens[torch.from_numpy(keep)]
    return {"tokens": tokens}
