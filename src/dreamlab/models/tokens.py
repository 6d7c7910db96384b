"""The autoregressive transformer of the token world model (IRIS's world model, GAIA-1's prompts).

A trajectory is one flat sequence of per-step blocks::

    [prompt] [f_1 ... f_N] [action]   [prompt] [f_1 ... f_N] [action]   ...
     slot 0   slots 1..N   slot N+1

``f_i`` are the frame's VQ tokens (:mod:`dreamlab.models.vq`), ``action`` an action token and
``prompt`` (optional, when ``prompt_words`` is non-empty) a *set* of scenario words encoded as a
bit mask: its embedding is a learned "no words" vector plus the sum of the words' vectors, so
"fast from-left" is one token. A GPT-style causal transformer reads it with **factorized
position embeddings**: ``e = tok + spatial[slot] + temporal[step]``, so a block means the same
thing wherever it sits in the window.

Heads (all on the final layer norm's output):

- next frame tokens: the output at the position before ``f_i`` predicts ``f_i`` (for ``f_1`` that
  position is the prompt token, or the previous action token without prompts);
- reward (3 classes: -, 0, + as IRIS) and termination (a logit): read at the action token, they
  predict the outcome of that action.

**Prompt dropout** (training): each sample loses its whole prompt with ``prompt_dropout``
(every step of the window, so the model also learns the unconditional dynamics) and each word
independently with ``word_dropout``. Sampling can then use classifier-free guidance:
``logits = l_uncond + s (l_cond - l_uncond)``.

**KV cache**: :meth:`TokenTransformer.forward` with a cache ``{"k", "v": (B, layers, heads, C,
head_dim), "fill": (B,)}`` attends the new tokens to the first ``fill`` cached positions of each
row (rows may hold different lengths) and writes their keys/values after them, in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TokenTransformer",
    "TokenTransformerConfig",
    "sample_logits",
    "token_transformer_preset",
]

Cache = dict[str, torch.Tensor]


@dataclass
class TokenTransformerConfig:
    """Sizes of the token transformer and its training losses."""

    tokens_per_frame: int = 16
    """VQ tokens per frame N (the tokenizer's grid squared)"""
    vocab_size: int = 512
    """VQ codebook size"""
    action_tokens: int = 3
    """number of action tokens (discrete actions; a 1-D Box is binned by the world model)"""
    prompt_words: tuple[str, ...] = ()
    """scenario vocabulary; empty = no prompt slot in a block"""
    context_steps: int = 6
    """blocks (steps) the transformer sees at most: training windows and the dream's memory"""
    d_model: int = 128
    """width of the residual stream"""
    layers: int = 2
    """transformer blocks"""
    heads: int = 4
    """attention heads (d_model must divide by it)"""
    mlp_ratio: int = 4
    """hidden width of each MLP as a multiple of d_model"""
    dropout: float = 0.1
    """dropout on embeddings, attention outputs and MLP outputs (training only)"""
    prompt_dropout: float = 0.3
    """probability a training window loses its whole prompt (for classifier-free guidance)"""
    word_dropout: float = 0.2
    """probability each prompt word is dropped from a training window (partial prompts)"""
    reward_weight: float = 1.0
    """weight of the reward cross-entropy"""
    termination_weight: float = 1.0
    """weight of the termination binary cross-entropy"""

    def __post_init__(self) -> None:
        self.prompt_words = tuple(str(w) for w in self.prompt_words)

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                raise ValueError(
                    f"TokenTransformerConfig.{name}={getattr(self, name)!r}: expected {expected}"
                )

        for name in ("tokens_per_frame", "vocab_size", "action_tokens", "d_model", "layers"):
            need(getattr(self, name) >= 1, name, ">= 1")
        need(self.context_steps >= 2, "context_steps", ">= 2")
        need(self.heads >= 1 and self.d_model % self.heads == 0, "heads", "a divisor of d_model")
        need(len(self.prompt_words) <= 30, "prompt_words", "at most 30 words (a bit mask)")
        need(len(set(self.prompt_words)) == len(self.prompt_words), "prompt_words", "unique")
        for name in ("dropout", "prompt_dropout", "word_dropout"):
            need(0.0 <= getattr(self, name) < 1.0, name, "in [0, 1)")

    @property
    def has_prompt(self) -> bool:
        """Whether blocks start with a prompt slot."""
        return len(self.prompt_words) > 0

    @property
    def frame_slot(self) -> int:
        """Slot of a block's first frame token."""
        return 1 if self.has_prompt else 0

    @property
    def block_len(self) -> int:
        """Tokens per block L = [prompt] + N + 1."""
        return self.frame_slot + self.tokens_per_frame + 1

    @property
    def action_slot(self) -> int:
        """Slot of the action token (the last of a block)."""
        return self.block_len - 1


def token_transformer_preset(
    name: str, tokens_per_frame: int = 16, vocab_size: int = 512, action_tokens: int = 3
) -> TokenTransformerConfig:
    """``tiny`` (CPU, 32x32 Catch) or ``iris`` (IRIS's 10 layers x 256, 20 steps; ~8.5M)."""
    if name == "tiny":
        return TokenTransformerConfig(tokens_per_frame, vocab_size, action_tokens)
    if name == "iris":
        return TokenTransformerConfig(
            tokens_per_frame,
            vocab_size,
            action_tokens,
            context_steps=20,
            d_model=256,
            layers=10,
            heads=4,
        )
    raise ValueError(f"unknown token transformer preset {name!r}; known: tiny, iris")


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One index per row of ``logits (B, V)``: argmax at temperature 0, else a sample of
    ``softmax(logits / temperature)`` restricted to the ``top_k`` best (0 = all)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    # inverse-CDF sampling: one uniform per row (torch.multinomial draws one exponential per
    # row and code, ten times slower at 512 codes, and most of a dream step's sampling time)
    cdf = torch.softmax(logits, -1).cumsum(-1)  # (B, V)
    u = 1.0 - torch.rand(cdf.shape[:-1] + (1,), generator=generator, device=cdf.device)  # (0, 1]
    # the first code whose cumulative probability reaches u (never one of probability 0)
    return (cdf < u * cdf[..., -1:]).sum(-1).clamp_(max=logits.shape[-1] - 1)


class _Block(nn.Module):
    def __init__(self, c: TokenTransformerConfig) -> None:
        super().__init__()
        self.heads = c.heads
        self.ln1 = nn.LayerNorm(c.d_model)
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model)
        self.proj = nn.Linear(c.d_model, c.d_model)
        self.ln2 = nn.LayerNorm(c.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(c.d_model, c.mlp_ratio * c.d_model),
            nn.GELU(),
            nn.Linear(c.mlp_ratio * c.d_model, c.d_model),
        )
        self.drop = nn.Dropout(c.dropout)

    def forward(
        self, x: torch.Tensor, cache: Cache | None, layer: int, pos: torch.Tensor | None
    ) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)  # (B, S, D) each
        q, k, v = (t.view(b, s, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, h, S, dh)
        if cache is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, S, dh)
        else:
            assert pos is not None
            ck, cv = cache["k"][:, layer], cache["v"][:, layer]  # (B, h, C, dh) views
            index = pos[:, None, :, None].expand(-1, self.heads, -1, k.shape[-1])  # (B, h, S, dh)
            ck.scatter_(2, index, k.to(ck.dtype))
            cv.scatter_(2, index, v.to(cv.dtype))
            slots = torch.arange(ck.shape[2], device=x.device)  # (C,)
            mask = slots[None, None, None, :] <= pos[:, None, :, None]  # (B, 1, S, C)
            att = F.scaled_dot_product_attention(q, ck, cv, attn_mask=mask)  # (B, h, S, dh)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class TokenTransformer(nn.Module):
    """Causal transformer over per-step token blocks. See the module docstring."""

    def __init__(self, config: TokenTransformerConfig) -> None:
        super().__init__()
        self.config = c = config
        self.code_embed = nn.Embedding(c.vocab_size, c.d_model)
        self.action_embed = nn.Embedding(c.action_tokens, c.d_model)
        self.word_embed = nn.Parameter(torch.zeros(max(1, len(c.prompt_words)), c.d_model))
        self.no_words = nn.Parameter(torch.zeros(c.d_model))
        self.spatial = nn.Parameter(torch.randn(c.block_len, c.d_model) * 0.02)
        self.temporal = nn.Parameter(torch.randn(c.context_steps, c.d_model) * 0.02)
        nn.init.normal_(self.word_embed, std=0.02)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.frame_head = nn.Linear(c.d_model, c.vocab_size)
        self.reward_head = nn.Linear(c.d_model, 3)
        self.termination_head = nn.Linear(c.d_model, 1)

    # ------------------------------------------------------------------ embedding and trunk
    def prompt_bits(self, values: torch.Tensor) -> torch.Tensor:
        """Bit masks ``(...)`` -> float multi-hot ``(..., W)``."""
        words = torch.arange(self.word_embed.shape[0], device=values.device)
        return ((values[..., None] >> words) & 1).to(self.no_words.dtype)

    def embed(self, values: torch.Tensor, slots: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Token values ``(B, S)`` at block slots and window steps ``(B, S)`` -> ``(B, S, D)``."""
        c = self.config
        is_action = slots == c.action_slot
        is_frame = (slots >= c.frame_slot) & ~is_action
        vals = values.clamp(min=0)
        codes = self.code_embed(vals.clamp(max=c.vocab_size - 1))  # (B, S, D)
        acts = self.action_embed(vals.clamp(max=c.action_tokens - 1))  # (B, S, D)
        x = torch.where(is_frame[..., None], codes, acts)
        if c.has_prompt:
            prompt = self.no_words + self.prompt_bits(vals) @ self.word_embed  # (B, S, D)
            x = torch.where((slots == 0)[..., None], prompt, x)
        return x + self.spatial[slots] + self.temporal[steps.clamp(max=c.context_steps - 1)]

    def forward(
        self,
        values: torch.Tensor,
        slots: torch.Tensor,
        steps: torch.Tensor,
        cache: Cache | None = None,
    ) -> torch.Tensor:
        """Hidden states ``(B, S, D)`` after the final layer norm.

        Args:
            values: token values ``(B, S)`` (codes, action ids, prompt bit masks by slot).
            slots: slot of each token in its block ``(B, S)`` or ``(S,)``.
            steps: step of each token's block within the window ``(B, S)`` or ``(S,)``.
            cache: optional KV cache (module docstring); its ``fill`` is advanced by S.
        """
        b, s = values.shape
        slots = slots.expand(b, s)
        steps = steps.expand(b, s)
        x = self.drop(self.embed(values, slots, steps))  # (B, S, D)
        pos = None
        if cache is not None:
            pos = cache["fill"][:, None] + torch.arange(s, device=values.device)  # (B, S)
            if int(pos.max()) >= cache["k"].shape[3]:
                raise RuntimeError(
                    f"TokenTransformer: KV cache of {cache['k'].shape[3]} positions overflows"
                )
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, pos)
        if cache is not None:
            cache["fill"] += s
        return self.ln_f(x)

    def new_cache(self, batch: int, capacity: int, device: torch.device | None = None) -> Cache:
        """An empty KV cache for ``batch`` rows of up to ``capacity`` tokens."""
        c = self.config
        device = device or self.frame_head.weight.device
        dtype = self.frame_head.weight.dtype
        shape = (batch, c.layers, c.heads, capacity, c.d_model // c.heads)
        return {
            "k": torch.zeros(shape, device=device, dtype=dtype),
            "v": torch.zeros(shape, device=device, dtype=dtype),
            "fill": torch.zeros(batch, dtype=torch.long, device=device),
        }

    def frame_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-frame-token logits ``(..., V)`` from hidden states ``(..., D)``."""
        return self.frame_head(hidden)

    def reward_value(self, hidden: torch.Tensor) -> torch.Tensor:
        """Expected reward ``(...)`` from hidden states at action tokens ``(..., D)``."""
        p = torch.softmax(self.reward_head(hidden).float(), -1)
        return p[..., 2] - p[..., 0]

    # ------------------------------------------------------------------ sequences
    def layout(self, steps: int, device: torch.device | None = None) -> tuple[torch.Tensor, ...]:
        """Slots and steps ``(steps * L - 1,)`` of a window of ``steps`` blocks, the last one
        without its action."""
        L = self.config.block_len
        n = steps * L - 1
        idx = torch.arange(n, device=device)
        return idx % L, idx // L

    def flatten(
        self, tokens: torch.Tensor, action: torch.Tensor, prompt: torch.Tensor | None
    ) -> torch.Tensor:
        """Blocks -> one sequence ``(B, T1 * L - 1)``.

        Args:
            tokens: frame tokens ``(B, T1, N)``.
            action: action ids ``(B, T1 - 1)`` (the last block has none).
            prompt: bit masks ``(B, T1)`` (ignored without a prompt slot).
        """
        c = self.config
        b, t1, _ = tokens.shape
        parts = []
        if c.has_prompt:
            p = prompt if prompt is not None else torch.zeros(b, t1, dtype=torch.long)
            parts.append(p.to(tokens.device)[..., None])
        parts.append(tokens)
        last = torch.zeros(b, 1, dtype=torch.long, device=tokens.device)
        parts.append(torch.cat([action.long(), last], 1)[..., None])
        return torch.cat(parts, -1).reshape(b, -1)[:, :-1]  # (B, T1*L - 1)

    def drop_prompts(self, prompt: torch.Tensor, generator: torch.Generator | None = None):
        """Prompt dropout on bit masks ``(B, T)``: whole windows, then single words."""
        c = self.config
        b = prompt.shape[0]
        dev = prompt.device
        keep_all = torch.rand(b, 1, device=dev, generator=generator) >= c.prompt_dropout
        words = len(c.prompt_words)
        keep_word = torch.rand(b, 1, words, device=dev, generator=generator) >= c.word_dropout
        mask = (keep_word.long() << torch.arange(words, device=dev)).sum(-1)  # (B, 1)
        return prompt * keep_all.long() & mask

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Next-token, reward and termination losses on a batch of windows.

        Batch: ``tokens (B, T1, N)`` int64, ``action (B, T1-1)`` action ids, ``reward (B, T1-1)``,
        ``terminated (B, T1-1)``, optional ``prompt (B, T1)`` bit masks. ``T1 <= context_steps``.
        """
        c = self.config
        tokens = batch["tokens"].long()
        b, t1, n = tokens.shape
        prompt = batch.get("prompt")
        if c.has_prompt:
            prompt = prompt.long() if prompt is not None else torch.zeros(b, t1, dtype=torch.long)
            if self.training:
                prompt = self.drop_prompts(prompt.to(tokens.device))
        seq = self.flatten(tokens, batch["action"], prompt)  # (B, S)
        slots, steps = self.layout(t1, tokens.device)
        hidden = self(seq, slots, steps)  # (B, S, D)
        L = c.block_len
        # frames of blocks 1.. are predicted from the position before each frame token
        starts = torch.arange(1, t1, device=tokens.device) * L + c.frame_slot  # (T1-1,)
        pos = (starts[:, None] + torch.arange(n, device=tokens.device)).reshape(-1)  # (M,)
        logits = self.frame_logits(hidden[:, pos - 1])  # (B, M, V)
        target = seq[:, pos]  # (B, M)
        frame_loss = F.cross_entropy(logits.reshape(-1, c.vocab_size), target.reshape(-1))
        act_pos = torch.arange(t1 - 1, device=tokens.device) * L + c.action_slot  # (T1-1,)
        h_act = hidden[:, act_pos]  # (B, T1-1, D)
        reward_cls = (torch.sign(batch["reward"].float()) + 1).long()  # (B, T1-1)
        reward_loss = F.cross_entropy(
            self.reward_head(h_act).reshape(-1, 3), reward_cls.reshape(-1)
        )
        term_logit = self.termination_head(h_act).squeeze(-1)  # (B, T1-1)
        term = batch["terminated"].float()
        term_loss = F.binary_cross_entropy_with_logits(term_logit, term)
        loss = frame_loss + c.reward_weight * reward_loss + c.termination_weight * term_loss
        with torch.no_grad():
            acc = (logits.argmax(-1) == target).float().mean()
        return loss, {
            "loss": float(loss.detach()),
            "frame_ce": float(frame_loss.detach()),
            "frame_acc": float(acc),
            "reward_ce": float(reward_loss.detach()),
            "termination_bce": float(term_loss.detach()),
        }

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_frame(
        self,
        prefix: torch.Tensor,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Sample the next frame's tokens ``(B, N)`` after ``prefix (B, S)``.

        ``prefix`` is a window laid out by :meth:`layout` that ends just before a block's first
        frame token (i.e. with the previous action, or with the new block's prompt). With
        ``use_cache`` the prefix is encoded once and each new token costs one position; without,
        the whole sequence is recomputed for every token (the reference for tests).
        """
        c = self.config
        b, s = prefix.shape
        L = c.block_len
        idx = torch.arange(s + c.tokens_per_frame, device=prefix.device)
        slots_all, steps_all = idx % L, idx // L
        out = []
        if use_cache:
            cache = self.new_cache(b, s + c.tokens_per_frame, prefix.device)
            h = self(prefix, slots_all[:s], steps_all[:s], cache)[:, -1]  # (B, D)
            for j in range(c.tokens_per_frame):
                tok = sample_logits(self.frame_logits(h), temperature, top_k, generator)  # (B,)
                out.append(tok)
                if j + 1 < c.tokens_per_frame:
                    p = s + j
                    h = self(tok[:, None], slots_all[p : p + 1], steps_all[p : p + 1], cache)[:, -1]
            return torch.stack(out, 1)
        seq = prefix
        for _ in range(c.tokens_per_frame):
            n = seq.shape[1]
            h = self(seq, slots_all[:n], steps_all[:n])[:, -1]  # (B, D)
            tok = sample_logits(self.frame_logits(h), temperature, top_k, generator)
            out.append(tok)
            seq = torch.cat([seq, tok[:, None]], 1)
        return torch.stack(out, 1)
