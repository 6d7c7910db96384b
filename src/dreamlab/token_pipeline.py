"""Generation four: train the token world model and an agent inside its dream, resumably.

``dreamlab train-tokens --data STORE --out DIR`` (or ``--env catch-32 --collect-episodes N``)
runs four stages in ``DIR``, each resuming from its own checkpoint:

1. ``tokenizer/``: the VQ tokenizer on single frames (:mod:`dreamlab.models.vq`);
2. ``transformer/``: the causal transformer on windows of tokenized episodes, with scenario
   prompts derived from the pixels (Catch: :mod:`dreamlab.envs.scenarios`);
3. ``agent/``: an actor-critic trained only on imagined rollouts of the token world model;
4. ``eval.json``: the agent in the real env, open-loop fidelity, imagination speed; ``summary.md``.

``build_contender`` gives the same run to ``dreamlab compare-models`` (generation 4).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamlab.checkpoint import (
    CheckpointError,
    has_model,
    load_model,
    load_optimizer,
    optimizer_step,
    save_model,
    save_optimizer,
    weights_step,
)
from dreamlab.dreamer_agent import ActorAgent
from dreamlab.envs.scenarios import CATCH_WORDS, ball_scenarios, parse_prompt, scenario_masks
from dreamlab.io import atomic_write_json, atomic_write_text, read_json
from dreamlab.models import frames_to_tensor
from dreamlab.models.actor_critic import ActorCritic, ActorCriticConfig
from dreamlab.models.tokens import TokenTransformer, token_transformer_preset
from dreamlab.models.vq import VQTokenizer, vq_preset
from dreamlab.progress import tqdm
from dreamlab.token_worldmodel import TokenWorldModel, action_tokens, token_start_bank
from dreamlab.train.fit import TrainConfig, fit, frame_batches
from dreamlab.train.imagination import ImaginationConfig, lambda_returns
from dreamlab.worldmodel import ActionSpec, State

__all__ = [
    "TokenAgent",
    "TokenRunConfig",
    "TrainTokensArgs",
    "build_contender",
    "load_token_run",
    "open_loop_fidelity",
    "prompt_agreement",
    "token_preset",
    "train_tokens",
    "train_tokens_cmd",
]

RUN_KIND = "tokens"


@dataclass
class TokenRunConfig:
    """Everything one token run trains with (stored in ``DIR/config.json``)."""

    preset: str = "tiny"
    """model sizes: tiny (CPU, 32x32) or iris (IRIS's sizes, a GPU)"""
    env: str = "catch-32"
    """env preset the episodes come from (and the agent is evaluated in)"""
    env_kwargs: dict[str, Any] = field(default_factory=lambda: {"discrete": True})
    """keyword arguments of the env"""
    prompts: bool = True
    """learn scenario prompts (Catch only: words derived from the frames)"""
    vq_steps: int = 500
    """tokenizer optimizer steps"""
    vq_batch: int = 64
    """frames per tokenizer step"""
    vq_lr: float = 2e-3
    """tokenizer learning rate"""
    transformer_steps: int = 1600
    """transformer optimizer steps"""
    transformer_batch: int = 24
    """windows per transformer step"""
    transformer_lr: float = 1e-3
    """transformer learning rate"""
    agent_updates: int = 60
    """actor-critic updates in imagination"""
    agent_starts: int = 64
    """imagined rollouts per update (start frames drawn from the data)"""
    horizon: int = 10
    """imagined steps per rollout"""
    action_bins: int = 9
    """bins of a 1-D Box action (discrete actions are used as they are)"""
    eval_episodes: int = 50
    """real-env episodes of the final evaluation"""
    checkpoint_every: int = 100
    """optimizer steps (agent: updates) between checkpoints"""
    seed: int = 0
    """seed of everything"""
    device: str = "cpu"
    """torch device"""
    num_threads: int = 1
    """torch CPU threads (0 keeps torch's default)"""

    def scaled(self, scale: float) -> TokenRunConfig:
        """A copy with every training budget multiplied by ``scale`` (at least 2 steps each)."""

        def s(n: int) -> int:
            return max(2, round(n * scale))

        return dataclasses.replace(
            self,
            vq_steps=s(self.vq_steps),
            transformer_steps=s(self.transformer_steps),
            agent_updates=s(self.agent_updates),
            eval_episodes=max(2, round(self.eval_episodes * min(1.0, scale * 5))),
        )


def token_preset(name: str) -> TokenRunConfig:
    """``tiny`` (CPU budget, ~10 min), ``iris`` (IRIS's sizes on 64x64 Catch, a GPU)."""
    if name == "tiny":
        return TokenRunConfig()
    if name == "iris":
        return TokenRunConfig(
            preset="iris",
            env="catch",
            vq_steps=20_000,
            transformer_steps=50_000,
            agent_updates=2000,
            agent_starts=512,
            horizon=20,
            device="cuda",
            num_threads=0,
        )
    raise ValueError(f"unknown token preset {name!r}; known: tiny, iris")


# ---------------------------------------------------------------------- data
@dataclass
class TokenData:
    """Tokenized episodes in memory."""

    tokens: list[np.ndarray]
    """per episode ``(T+1, N)`` int64"""
    actions: list[np.ndarray]
    """per episode ``(T,)`` action ids"""
    rewards: list[np.ndarray]
    """per episode ``(T,)`` float32"""
    terminated: list[np.ndarray]
    """per episode ``(T,)`` bool"""
    prompts: list[np.ndarray]
    """per episode ``(T+1,)`` int64 prompt bit masks (zeros without prompts)"""


@torch.no_grad()
def tokenize_store(
    tokenizer: VQTokenizer, store: Any, spec: ActionSpec, bins: int, prompts: bool
) -> TokenData:
    """Tokenize every episode of ``store`` (and derive its prompt labels from the pixels)."""
    data = TokenData([], [], [], [], [])
    dev = next(tokenizer.parameters()).device
    for i in store.indices:
        ep = store.episode(i)
        obs = np.asarray(ep["obs"])
        toks = [
            tokenizer.tokenize(frames_to_tensor(obs[j : j + 256], dev))
            for j in range(0, len(obs), 256)
        ]
        data.tokens.append(torch.cat(toks).cpu().numpy())
        data.actions.append(action_tokens(np.asarray(ep["action"]), spec, bins).numpy())
        data.rewards.append(np.asarray(ep["reward"], np.float32))
        data.terminated.append(np.asarray(ep["terminated"], bool))
        data.prompts.append(scenario_masks(obs) if prompts else np.zeros(len(obs), np.int64))
    return data


def window_batches(
    data: TokenData, steps: int, batch_size: int, seed: int = 0, end_fraction: float = 0.1
) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
    """Resumable stream of windows of ``steps`` blocks (``steps - 1`` transitions).

    Batch ``s`` comes from a generator seeded with ``(seed, s)``; a fraction ``end_fraction`` of
    windows end at the episode's last frame so that terminations are seen often.
    """
    lengths = np.array([len(a) for a in data.actions])
    ok = np.nonzero(lengths >= steps - 1)[0]
    if len(ok) == 0:
        raise ValueError(f"no episode has the {steps - 1} steps a training window needs")
    weight = (lengths[ok] - steps + 2).astype(np.float64)
    weight /= weight.sum()

    def stream(start_step: int) -> Iterator[dict[str, np.ndarray]]:
        step = start_step
        while True:
            rng = np.random.default_rng([seed, step])
            eps = ok[rng.choice(len(ok), batch_size, p=weight)]
            out: dict[str, list[np.ndarray]] = {
                k: [] for k in ("tokens", "action", "reward", "terminated", "prompt")
            }
            for e in eps:
                last = lengths[e] - (steps - 1)
                s = last if rng.random() < end_fraction else int(rng.integers(0, last + 1))
                out["tokens"].append(data.tokens[e][s : s + steps])
                out["prompt"].append(data.prompts[e][s : s + steps])
                out["action"].append(data.actions[e][s : s + steps - 1])
                out["reward"].append(data.rewards[e][s : s + steps - 1])
                out["terminated"].append(data.terminated[e][s : s + steps - 1])
            step += 1
            yield {k: np.stack(v) for k, v in out.items()}

    return stream


# ---------------------------------------------------------------------- agent
class TokenAgent(ActorAgent):
    """An actor trained in the token dream, acting in real envs (SB3-shaped ``predict``).

    Per call: ``observe`` the real frame into the open block, act on ``[z_q, h]``, then
    ``advance`` the transformer with the action (no frame is imagined: the next call brings the
    real one). The rest of ``predict`` is :class:`~dreamlab.dreamer_agent.ActorAgent`'s.
    """

    world_model: TokenWorldModel

    def __init__(self, world_model: TokenWorldModel, actor_critic: ActorCritic, seed: int = 0):
        super().__init__(world_model, actor_critic, seed)
        self.actor_critic.eval()

    def _after_action(self, state: State, env_action: torch.Tensor) -> State:
        return self.world_model.advance(state, env_action)

    def dream_policy(self, features: torch.Tensor) -> torch.Tensor:
        """The same actor inside the dream: features ``(N, F)`` -> env actions (its mode)."""
        with torch.no_grad():
            return self.actor_critic.to_env(self.actor_critic.policy(features).mode())


def imagine_rollouts(
    world_model: TokenWorldModel,
    actor_critic: ActorCritic,
    start: dict[str, torch.Tensor],
    horizon: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features ``(H+1, N, F)``, policy actions ``(H, N, ...)``, rewards and continuation
    flags ``(H, N)`` of ``horizon`` imagined steps from start-bank rows ``start``."""
    state = world_model.start_state(start, generator)
    feats = [world_model.features(state).clone()]
    actions, rewards, conts = [], [], []
    for _ in range(horizon):
        with torch.no_grad():
            action = actor_critic.policy(feats[-1]).sample(generator)
        state, reward, terminated = world_model.step(
            state, actor_critic.to_env(action), 1.0, generator
        )
        actions.append(action.clone())
        rewards.append(reward.clone())
        conts.append((~terminated).float().clone())
        feats.append(world_model.features(state).clone())
    return torch.stack(feats), torch.stack(actions), torch.stack(rewards), torch.stack(conts)


def _agent_update(
    ac: ActorCritic,
    opt: torch.optim.Optimizer,
    cfg: ImaginationConfig,
    traj: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> dict[str, float]:
    """Dreamer's actor-critic losses (see :mod:`dreamlab.train.imagination`) on one rollout."""
    feats, actions, rewards, conts = traj
    with torch.no_grad():
        values = ac.value(feats)  # (H+1, N)
        returns = lambda_returns(rewards, conts, values, cfg.gamma, cfg.lambda_)  # (H, N)
        alive = torch.cat([torch.ones_like(conts[:1]), conts[:-1]], 0)
        weight = torch.cumprod(alive, 0)  # (H, N)
        scale = ac.update_return_scale(returns, cfg.return_decay)
        advantage = (returns - values[:-1]) / scale
    dist = ac.policy(feats[:-1].flatten(0, 1))
    logp = dist.log_prob(actions.flatten(0, 1)).view_as(returns)
    entropy = dist.entropy().view_as(returns)
    actor_loss = -(weight * (logp * advantage + cfg.entropy * entropy)).mean()
    logits = ac.critic(feats[:-1])  # (H, N, K)
    with torch.no_grad():
        slow = ac.value(feats[:-1], slow=True)
    critic_loss = ac.twohot.loss(logits, returns) + cfg.slow_critic_weight * ac.twohot.loss(
        logits, slow
    )
    critic_loss = (weight * critic_loss).mean()
    opt.zero_grad(set_to_none=True)
    (actor_loss + critic_loss).backward()
    torch.nn.utils.clip_grad_norm_(ac.actor.parameters(), cfg.grad_clip)
    torch.nn.utils.clip_grad_norm_(ac.critic.parameters(), cfg.grad_clip)
    opt.step()
    ac.update_slow_critic(cfg.slow_critic_fraction)
    return {
        "actor_loss": float(actor_loss.detach()),
        "critic_loss": float(critic_loss.detach()),
        "return": float(returns[0].mean()),
        "imagined_reward": float(rewards.mean()),
        "entropy": float(entropy.detach().mean()),
    }


def _agent_optimizer(ac: ActorCritic, cfg: ImaginationConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        [
            {"params": list(ac.actor.parameters()), "lr": cfg.actor_lr},
            {"params": list(ac.critic.parameters()), "lr": cfg.critic_lr},
        ],
        eps=1e-5,
    )


def agent_imagination_config() -> ImaginationConfig:
    """Imagination settings of the token agent (Catch-tuned learning rates, as Dreamer's)."""
    return ImaginationConfig(actor_lr=3e-4, critic_lr=3e-4, entropy=3e-3, gamma=0.97)


def train_agent(
    world_model: TokenWorldModel,
    bank: dict[str, torch.Tensor],
    cfg: TokenRunConfig,
    out_dir: Path,
    progress: bool = True,
) -> tuple[ActorCritic, float]:
    """Actor-critic in the token dream, resumable in ``out_dir``; returns (agent, seconds)."""
    spec = world_model.action_spec
    ac_cfg = ActorCriticConfig(
        feature_dim=world_model.feature_dim,
        action_kind=spec.kind,
        action_dim=spec.n,
        action_low=tuple(spec.low) or (-1.0,),
        action_high=tuple(spec.high) or (1.0,),
        hidden=128,
        value_bins=63,
    )
    torch.manual_seed(cfg.seed)
    ac = ActorCritic(ac_cfg).to(world_model.device)
    icfg = agent_imagination_config()
    opt = _agent_optimizer(ac, icfg)
    start, seconds = 0, 0.0
    trainer = out_dir / "trainer.json"
    if trainer.exists():
        state = read_json(trainer, "agent trainer state")
        start, seconds = int(state["step"]), float(state["seconds"])
        if weights_step(out_dir) != start or optimizer_step(out_dir) != start:
            raise CheckpointError(f"{out_dir}: agent checkpoint files are from different steps")
        ac = load_model(out_dir, ActorCritic, device=str(world_model.device))  # type: ignore[assignment]
        opt = _agent_optimizer(ac, icfg)
        load_optimizer(out_dir, opt)
    if start >= cfg.agent_updates:
        return ac, seconds
    gen = torch.Generator(device=world_model.device)
    n_bank = len(bank["tokens"])
    t0 = time.perf_counter()
    bar = tqdm(
        total=cfg.agent_updates, initial=start, desc="agent", disable=not progress, file=sys.stderr
    )
    metrics: dict[str, float] = {}
    for u in range(start + 1, cfg.agent_updates + 1):
        gen.manual_seed(cfg.seed * 1_000_003 + u)
        idx = torch.randint(n_bank, (cfg.agent_starts,), generator=gen)
        rows = {"tokens": bank["tokens"][idx].to(world_model.device)}
        traj = imagine_rollouts(world_model, ac, rows, cfg.horizon, gen)
        metrics = _agent_update(ac, opt, icfg, traj)
        bar.update(1)
        bar.set_postfix(ret=f"{metrics['return']:.3f}")
        if u % cfg.checkpoint_every == 0 or u == cfg.agent_updates:
            now = seconds + time.perf_counter() - t0
            save_model(out_dir, ac, step=u)
            save_optimizer(out_dir, opt, step=u)
            atomic_write_json(trainer, {"step": u, "seconds": now, "metrics": metrics})
    bar.close()
    return ac, seconds + time.perf_counter() - t0


# ---------------------------------------------------------------------- measurements
@torch.inference_mode()
def open_loop_fidelity(
    world_model: TokenWorldModel,
    episodes: list[dict[str, np.ndarray]],
    context: int = 4,
    horizons: tuple[int, ...] = (1, 5, 10, 20),
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Pixel MSE of open-loop imagination vs copy-last-frame, at each horizon.

    The model observes ``context`` real frames (with the real actions between them), then
    imagines ``max(horizons)`` steps with the real actions; copy-last repeats the last real frame.
    """
    from dreamlab.eval.fidelity import open_loop

    h = max(horizons)
    eps = [e for e in episodes if len(e["action"]) >= context + h - 1]
    res = open_loop(world_model, eps, context, h, temperature=temperature, seed=seed)
    return {
        "episodes": len(eps),
        "context": context,
        "model_mse": {k: float(res.mse[:, k - 1].mean()) for k in horizons},
        "copy_last_mse": {k: float(res.baseline_mse[:, k - 1].mean()) for k in horizons},
    }


@torch.inference_mode()
def imagination_speed(
    world_model: TokenWorldModel, bank: dict[str, torch.Tensor], batch: int = 128, steps: int = 10
) -> float:
    """Imagined env steps per second (``batch`` dreams, ``steps`` steps each)."""
    idx = torch.arange(batch) % len(bank["tokens"])
    state = world_model.start_state({"tokens": bank["tokens"][idx]})
    n = world_model.action_spec.n
    gen = torch.Generator(device=world_model.device).manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        if world_model.action_spec.kind == "discrete":
            a = torch.randint(n, (batch,), generator=gen)
        else:
            a = torch.rand(batch, n, generator=gen) * 2 - 1
        state, _, _ = world_model.step(state, a, 1.0, gen)
    return batch * steps / (time.perf_counter() - t0)


@torch.inference_mode()
def prompt_agreement(
    world_model: TokenWorldModel,
    bank: dict[str, torch.Tensor],
    *,
    dreams: int = 32,
    steps: int = 30,
    guidance: float = 3.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """How often balls imagined under each one-word prompt show that word (pixel probe).

    For each word (and no prompt), ``dreams`` dreams of ``steps`` random-action steps are decoded;
    :func:`dreamlab.envs.scenarios.ball_scenarios` reads every ball that *enters during the
    dream* (the first one came from the real start frame). Agreement = fraction of those balls
    whose words include the prompt word; the unprompted rate of the same word is the baseline
    (chance is 1/2 for each word).
    """
    words = world_model.prompt_words
    if not words:
        raise ValueError("prompt_agreement: this model was trained without prompts")
    saved = (world_model.prompt, world_model.guidance)
    out: dict[str, Any] = {
        "dreams": dreams,
        "steps": steps,
        "guidance": guidance,
        "temperature": temperature,
        "top_k": world_model.top_k,
        "words": {},
    }
    gen = torch.Generator(device=world_model.device)
    idx = torch.arange(dreams) % len(bank["tokens"])
    balls_by_prompt: dict[str, list[tuple[str, ...]]] = {}
    try:
        for prompt in ("", *words):
            world_model.set_prompt(prompt or None, guidance if prompt else 1.0)
            gen.manual_seed(seed)
            state = world_model.start_state({"tokens": bank["tokens"][idx]})
            frames = [world_model.decode(state).movedim(1, -1).cpu().numpy()]
            for _ in range(steps):
                a = torch.randint(world_model.action_spec.n, (dreams,), generator=gen)
                state, _, _ = world_model.step(state, a, temperature, gen)
                frames.append(world_model.decode(state).movedim(1, -1).cpu().numpy())
            video = np.stack(frames, 1)  # (dreams, steps+1, S, S, 3)
            found = []
            for d in range(dreams):
                found += [b.words for b in ball_scenarios(video[d]) if b.start > 0]
            balls_by_prompt[prompt] = found
    finally:
        world_model.prompt, world_model.guidance = saved
    base = balls_by_prompt[""]
    for w in words:
        got = balls_by_prompt[w]
        out["words"][w] = {
            "balls": len(got),
            "agreement": float(np.mean([w in b for b in got])) if got else float("nan"),
            "unprompted_rate": float(np.mean([w in b for b in base])) if base else float("nan"),
            "chance": 0.5,
        }
    return out


# ---------------------------------------------------------------------- the run
@dataclass
class TokenRun:
    """A trained token run: world model, agent, start banks."""

    path: Path
    """the run directory"""
    config: TokenRunConfig
    """what it was trained with"""
    world_model: TokenWorldModel
    """tokenizer + transformer behind the WorldModel protocol"""
    agent: TokenAgent | None
    """the actor trained in the dream (None before that stage)"""
    bank: dict[str, torch.Tensor]
    """dream start bank ``{"tokens": (N, n_tokens)}`` (every frame of the data, at most 4096)"""
    seconds: float
    """wall seconds of training, all stages and sessions"""


def _open_store(
    cfg: TokenRunConfig, data: Path | None, out: Path, collect_episodes: int, progress: bool
):
    from dreamlab.data.collect import CollectConfig, collect
    from dreamlab.data.store import EpisodeStore

    if data is not None:
        return EpisodeStore.open(data)
    path = out / "data"
    collect(
        CollectConfig(
            env=cfg.env,
            out=path,
            episodes=collect_episodes,
            policy="random",
            seed=cfg.seed,
            workers=1,
            env_kwargs=dict(cfg.env_kwargs),
            progress=progress,
        )
    )
    return EpisodeStore.open(path)


def _action_spec(store: Any) -> ActionSpec:
    from dreamlab.data.store import space_from_description

    return ActionSpec.from_space(space_from_description(store.meta.action_space))


def _models(
    cfg: TokenRunConfig, spec: ActionSpec, prompts: bool
) -> tuple[VQTokenizer, TokenTransformer]:
    vcfg = vq_preset(cfg.preset)
    n_act = spec.n if spec.kind == "discrete" else cfg.action_bins
    tcfg = token_transformer_preset(cfg.preset, vcfg.tokens_per_frame, vcfg.codebook_size, n_act)
    if prompts:
        tcfg = dataclasses.replace(tcfg, prompt_words=CATCH_WORDS)
    torch.manual_seed(cfg.seed)
    return VQTokenizer(vcfg), TokenTransformer(tcfg)


def _check_config(out: Path, cfg: TokenRunConfig) -> TokenRunConfig:
    path = out / "config.json"
    if path.exists():
        saved = read_json(path, "token run config")
        if not isinstance(saved, dict) or saved.get("kind") != RUN_KIND:
            raise ValueError(f"{out}: holds a run that is not a token run; use another --out")
        old = TokenRunConfig(**saved["tokens"])
        if asdict(old) != asdict(cfg):
            diff = {k: (v, asdict(cfg)[k]) for k, v in asdict(old).items() if asdict(cfg)[k] != v}
            raise ValueError(
                f"{out}: was started with other settings {diff} (saved, given); resume with the "
                "same ones or use another --out"
            )
        return old
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"kind": RUN_KIND, "tokens": asdict(cfg)})
    return cfg


def train_tokens(
    cfg: TokenRunConfig,
    out: str | Path,
    *,
    data: str | Path | None = None,
    collect_episodes: int = 200,
    progress: bool = True,
    evaluate: bool = True,
) -> TokenRun:
    """Run (or resume) every stage of a token run in ``out``; see the module docstring."""
    out = Path(out)
    cfg = _check_config(out, cfg)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    store = _open_store(cfg, Path(data) if data else None, out, collect_episodes, progress)
    spec = _action_spec(store)
    atomic_write_json(out / "action_spec.json", spec.to_dict())
    atomic_write_json(out / "data.json", {"store": str(Path(store.path).resolve())})
    prompts = cfg.prompts and cfg.env.startswith("catch")
    vq, tf = _models(cfg, spec, prompts)
    shape = tuple(store.meta.obs_shape or ())
    if shape != (vq.config.frame_size, vq.config.frame_size, 3):
        raise ValueError(
            f"{store.path}: frames of shape {shape}, the {cfg.preset!r} tokenizer reads "
            f"({vq.config.frame_size}, {vq.config.frame_size}, 3); pick a preset or env that fits"
        )
    common = dict(
        device=cfg.device,
        num_threads=cfg.num_threads,
        progress=progress,
        tensorboard=False,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
    )

    r_vq = fit(
        vq,
        frame_batches(store, cfg.vq_batch, seed=cfg.seed),
        TrainConfig(batch_size=cfg.vq_batch, lr=cfg.vq_lr, log_every=25, **common),
        out / "tokenizer",
        total_steps=cfg.vq_steps,
        stage="tokenizer",
    )
    vq.eval()
    tdata = tokenize_store(vq, store, spec, tf.config.action_tokens, prompts)
    r_tf = fit(
        tf,
        window_batches(tdata, tf.config.context_steps, cfg.transformer_batch, seed=cfg.seed),
        TrainConfig(
            batch_size=cfg.transformer_batch, lr=cfg.transformer_lr, log_every=25, **common
        ),
        out / "transformer",
        total_steps=cfg.transformer_steps,
        stage="transformer",
    )
    tf.eval()
    wm = TokenWorldModel(vq, tf, spec)
    bank = token_start_bank(wm, store, frames="all", max_rows=4096)
    ac, agent_seconds = train_agent(wm, bank, cfg, out / "agent", progress)
    agent = TokenAgent(wm, ac, seed=cfg.seed)
    seconds = r_vq.seconds + r_tf.seconds + agent_seconds
    run = TokenRun(out, cfg, wm, agent, bank, seconds)
    if evaluate:
        evaluate_run(run, store, progress)
    return run


def heldout_episodes(cfg: TokenRunConfig, count: int) -> list[dict[str, np.ndarray]]:
    """``count`` fresh random-policy episodes (seeds 1_000_000 + i: not in any collected store)."""
    from dreamlab.data.collect import play_episode
    from dreamlab.envs import make_env

    env = make_env(cfg.env, **cfg.env_kwargs)
    return [play_episode(env, "random", 1_000_000 + i, 1000) for i in range(count)]


def evaluate_run(run: TokenRun, store: Any, progress: bool = True) -> dict[str, Any]:
    """The agent in the real env, fidelity, speed and prompt agreement -> ``eval.json``."""
    from dreamlab.envs import make_env
    from dreamlab.eval.evaluate import evaluate_policy

    cfg, wm = run.config, run.world_model
    assert run.agent is not None
    res = evaluate_policy(
        lambda: make_env(cfg.env, **cfg.env_kwargs),
        run.agent,
        cfg.eval_episodes,
        env_name=cfg.env,
        seed=10_000 + cfg.seed,
        record=False,
        progress=progress,
    )
    episodes = heldout_episodes(cfg, 32)
    report: dict[str, Any] = {
        "agent": res.summary(),
        "fidelity": open_loop_fidelity(wm, episodes),
        "imagination_steps_per_s": imagination_speed(wm, run.bank),
        "params": {
            "tokenizer": sum(p.numel() for p in wm.tokenizer.parameters()),
            "transformer": sum(p.numel() for p in wm.transformer.parameters()),
            "agent": sum(p.numel() for p in run.agent.actor_critic.parameters()),
        },
        "train_seconds": run.seconds,
    }
    if wm.prompt_words:
        report["prompts"] = prompt_agreement(wm, token_start_bank(wm, store, frames="first"))
    atomic_write_json(run.path / "eval.json", report)
    atomic_write_text(run.path / "summary.md", _summary(run, report))
    if progress:
        print(_summary(run, report), file=sys.stderr)
    return report


def _summary(run: TokenRun, r: dict[str, Any]) -> str:
    fid = r["fidelity"]
    lines = [
        f"# Token world model run `{run.path}` (preset `{run.config.preset}`)",
        "",
        f"- parameters: tokenizer {r['params']['tokenizer']:,}, transformer "
        f"{r['params']['transformer']:,}, agent {r['params']['agent']:,}",
        f"- training wall time (all stages, all sessions): {r['train_seconds']:.0f} s",
        f"- imagination: {r['imagination_steps_per_s']:.0f} env steps/s (batch 128)",
        f"- agent in the real env ({r['agent']['episodes']} episodes): mean return "
        f"{r['agent']['mean_return']:.2f}"
        + (f", catch rate {r['agent']['catch_rate']:.1%}" if "catch_rate" in r["agent"] else ""),
        "",
        f"Open-loop pixel MSE ({fid['episodes']} held-out episodes, {fid['context']} real frames "
        "then the real actions):",
        "",
        "| h | model | copy last frame |",
        "|---:|---:|---:|",
    ]
    for h, m in fid["model_mse"].items():
        lines.append(f"| {h} | {m:.5f} | {fid['copy_last_mse'][h]:.5f} |")
    if "prompts" in r:
        p = r["prompts"]
        lines += [
            "",
            f"Prompt agreement (guidance {p['guidance']}, balls entering in {p['dreams']} dreams of "
            f"{p['steps']} steps):",
            "",
            "| word | balls | agreement | unprompted rate |",
            "|---|---:|---:|---:|",
        ]
        for w, s in p["words"].items():
            lines.append(
                f"| {w} | {s['balls']} | {s['agreement']:.1%} | {s['unprompted_rate']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def is_token_run(path: str | Path) -> bool:
    """Whether ``path`` holds a token run (config.json of kind 'tokens')."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    data = read_json(cfg, "run config")
    return isinstance(data, dict) and data.get("kind") == RUN_KIND


def load_token_run(
    path: str | Path, device: str = "cpu"
) -> tuple[TokenRunConfig, TokenWorldModel, TokenAgent | None]:
    """The world model (and agent, once trained) of a finished token run."""
    path = Path(path)
    if not is_token_run(path):
        raise ValueError(f"{path}: not a token run (no config.json of kind 'tokens')")
    cfg = TokenRunConfig(**read_json(path / "config.json", "run config")["tokens"])
    for stage in ("tokenizer", "transformer"):
        if not has_model(path / stage):
            raise ValueError(f"{path}: the {stage} is not trained yet; run train-tokens first")
    vq = load_model(path / "tokenizer", VQTokenizer, device=device)
    tf = load_model(path / "transformer", TokenTransformer, device=device)
    assert isinstance(vq, VQTokenizer) and isinstance(tf, TokenTransformer)
    spec = ActionSpec(**read_json(path / "action_spec.json", "action spec"))
    wm = TokenWorldModel(vq, tf, spec)
    agent = None
    if has_model(path / "agent"):
        ac = load_model(path / "agent", ActorCritic, device=device)
        assert isinstance(ac, ActorCritic)
        agent = TokenAgent(wm, ac, seed=cfg.seed)
    return cfg, wm, agent


# ---------------------------------------------------------------------- CLI
@dataclass
class TrainTokensArgs:
    """Train the token world model (VQ + transformer, IRIS/GAIA-1) and an agent in its dream."""

    out: Path = Path("runs/tokens")
    """run directory (created, or resumed with the same settings)"""
    data: Path | None = None
    """episode store to train on; without it, --collect-episodes are collected into OUT/data"""
    preset: str = "tiny"
    """sizes and budgets: tiny (CPU, 32x32 Catch) or iris (IRIS's sizes, a GPU)"""
    env: str | None = None
    """env preset (default: the preset's, catch-32 for tiny)"""
    collect_episodes: int = 200
    """episodes to collect with a random policy when --data is not given"""
    vq_steps: int | None = None
    """override the preset's tokenizer steps"""
    transformer_steps: int | None = None
    """override the preset's transformer steps"""
    agent_updates: int | None = None
    """override the preset's actor-critic updates"""
    eval_episodes: int | None = None
    """override the preset's number of real evaluation episodes"""
    prompts: bool = True
    """learn Catch scenario prompts (fast, slow, from-left, from-right)"""
    seed: int = 0
    """seed of everything"""
    device: str | None = None
    """torch device (default: the preset's)"""
    progress: bool = True
    """progress bars and the summary"""


def train_tokens_cmd(args: TrainTokensArgs) -> Path:
    """CLI wrapper of :func:`train_tokens`."""
    cfg = token_preset(args.preset)
    overrides: dict[str, Any] = {"seed": args.seed, "prompts": args.prompts}
    for name in (
        "env",
        "vq_steps",
        "transformer_steps",
        "agent_updates",
        "eval_episodes",
        "device",
    ):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    cfg = dataclasses.replace(cfg, **overrides)
    t0, c0 = time.perf_counter(), time.process_time()
    train_tokens(
        cfg,
        args.out,
        data=args.data,
        collect_episodes=args.collect_episodes,
        progress=args.progress,
    )
    print(
        f"train-tokens: {args.out} done in {time.perf_counter() - t0:.0f} s wall, "
        f"{time.process_time() - c0:.0f} s CPU (this session)",
        file=sys.stderr,
    )
    return Path(args.out)


def dream_tokens(
    run: Path,
    video: Path | None,
    steps: int,
    temperature: float,
    agent: str,
    seed: int,
    prompt: str | None,
    guidance: float,
) -> Path:
    """``dreamlab dream`` for a token run: a decoded dream, optionally following a prompt."""
    from dreamlab.data.store import EpisodeStore
    from dreamlab.viz import write_video

    cfg, wm, token_agent = load_token_run(run)
    words = parse_prompt(prompt, wm.prompt_words)
    wm.set_prompt(words or None, guidance if words else 1.0)
    data = Path(read_json(run / "data.json", "token run data")["store"])
    if not (data / "store.json").exists():
        raise ValueError(f"{run}: the episode store {data} it trained on is gone")
    bank = token_start_bank(wm, EpisodeStore.open(data), frames="first")
    gen = torch.Generator().manual_seed(seed)
    state = wm.start_state(
        {"tokens": bank["tokens"][torch.randint(len(bank["tokens"]), (1,), generator=gen)]}
    )
    frames = [wm.decode(state)]
    use_agent = agent == "controller" and token_agent is not None
    for _ in range(steps):
        if use_agent:
            assert token_agent is not None
            a = token_agent.dream_policy(wm.features(state))
        else:
            a = torch.randint(wm.action_spec.n, (1,), generator=gen)
        state, _, term = wm.step(state, a, temperature, gen)
        frames.append(wm.decode(state))
        if bool(term[0]):
            break
    out = video or (run / "dream.mp4")
    uint8 = np.stack(
        [(f[0].movedim(0, -1).clamp(0, 1) * 255).round().byte().numpy() for f in frames]
    )
    write_video(out, uint8, fps=15)
    balls = [b.words for b in ball_scenarios(uint8) if b.start > 0]
    print(f"dream: {len(frames)} frames -> {out}; balls entering: {balls}")
    return Path(out)


# ---------------------------------------------------------------------- compare-models
def build_contender(ctx: Any) -> Any:
    """Generation 4 for ``dreamlab compare-models``: train (resumably) in ``ctx.out``."""
    from dreamlab.eval.contender import Contender

    cfg = dataclasses.replace(
        token_preset("tiny"), env=ctx.env, env_kwargs=dict(ctx.env_kwargs), seed=ctx.seed
    )
    if ctx.scale != 1.0:
        cfg = cfg.scaled(ctx.scale)
    store_path = Path(ctx.data.path) if hasattr(ctx.data, "path") else Path(ctx.data)
    run = train_tokens(cfg, ctx.out, data=store_path, progress=ctx.progress, evaluate=False)
    assert run.agent is not None
    wm = run.world_model
    return Contender(
        name="tokens (VQ + transformer) + actor-critic",
        generation=4,
        world_model=wm,
        policy=run.agent,
        dream_policy=run.agent.dream_policy,
        dream_start=run.bank,
        params_world_model=sum(p.numel() for p in wm.tokenizer.parameters())
        + sum(p.numel() for p in wm.transformer.parameters()),
        params_agent=sum(p.numel() for p in run.agent.actor_critic.parameters()),
        train_seconds=run.seconds,
        notes={"tokens_per_frame": wm.n_tokens, "context_steps": wm.window},
    )
