"""The actor-critic every fine-tuning method shares (DrQ-v2's pattern, RLPD's critic).

An agent is a ``Policy``: it saves, loads, evaluates and films like any other.
It wraps the behaviour-cloned ``base`` policy, frozen:

- ``base.step`` gives, per env step, the BC action (with its history and temporal
  ensemble) and the BC encoder's features; with ``encoder="frozen"`` those features
  are the agent's representation and the replay stores them instead of pixels;
  with ``encoder="train"`` a trainable copy of the BC encoders reads the uint8 frames
  stored in the replay, with random-shift augmentation, trained by the critic (DrQ-v2).
- The actor maps features (and, for the BC-based methods, the BC action) to an action;
  each method (``rlpd``, ``ibrl``, ``residual``: one file each) says how.
- The critic is an ensemble of LayerNorm MLPs (RLPD) with target copies. With
  ``asymmetric`` it sees the privileged simulator state and proprioception instead of
  the features; the actor never sees the privileged state.
- An optional auxiliary head predicts object positions from the actor's first layer.
- With ``refit_positions`` (frozen encoder, a BC policy that estimates object positions
  frame by frame) the agent carries its own copy of the BC position estimator, refitted
  now and then to the simulator's object positions on the frames it visits, and its
  features are made with it (``refit_estimator``): the BC estimator learnt from the
  demonstrations' frames and misreads the states an improving agent reaches.

Updates are TD3-style: n-step targets from the minimum of two target critics at a
noise-smoothed next action; the actor ascends the ensemble mean.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import nn

from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import Policy, make_policy, mixed_precision
from robolearn.policies.layers import Normalizer


@dataclass
class AgentConfig:
    """Network settings of an RL fine-tuning agent (saved with it)."""

    base_policy: str = "bc"
    """Policy family of the frozen base policy."""
    base_config: dict = field(default_factory=dict)
    """The base policy's config (copied from its folder)."""
    encoder: Literal["frozen", "train"] = "frozen"
    """frozen: the base policy's encoder features; train: a trainable copy reading pixels (DrQ-v2)."""
    hidden: int = 256
    """Width of actor and critic MLPs."""
    critics: int = 2
    """Critics in the ensemble (RLPD uses 2 to 10); targets use the minimum of two of them."""
    asymmetric: bool = False
    """The critic sees the privileged simulator state and proprioception instead of pixels."""
    aux_weight: float = 0.0
    """Weight of the auxiliary loss predicting object positions from the actor's first layer (0: off)."""
    bc_weight: float = 0.0
    """Weight of a behaviour-cloning term on the demonstrations in the actor loss (TD3+BC; 0: off);
    with it the Q term is divided by the batch's mean |Q| so the weight means the same at every scale."""
    prior_weight: float = 0.0
    """Weight of a penalty on how far the actor's action departs from the base policy's, on every sample
    (residual: the residual in units of its bound; rlpd and ibrl: in normalised action units; 0: off);
    with it the Q term is divided by the batch's mean |Q|. Adam moves the actor at its learning rate
    whatever the size of the critic's action gradient, so a small, noisy gradient still drives an
    unpenalised residual to its bound; the penalty sets where the pull of the gradient balances."""
    refit_positions: bool = False
    """Carry a trainable copy of the BC policy's per-frame position estimator, refitted on the frames the
    agent visits (privileged positions as labels), and build the features from its estimates."""
    from_bc: bool = True
    """rlpd only: the actor starts as the base policy (False: a fresh actor, RL from scratch)."""
    residual_scale: float = 0.05
    """residual only: the largest residual, in normalised action units, once handed over."""
    target_noise: float = 0.2
    """Standard deviation of the smoothing noise on target actions (TD3), clipped at 2.5 x."""

    def __post_init__(self) -> None:
        if self.critics < 2:
            raise ValueError(f"the critic ensemble needs at least 2 members, found {self.critics}")


class ActorCritic(Policy):
    """Shared networks, acting and losses; subclasses define ``compose`` (and maybe ``select``)."""

    config_class = AgentConfig
    uses_base_action: ClassVar[bool] = True

    def __init__(self, features: FeatureSpec, config: AgentConfig) -> None:
        super().__init__(features, config)
        base = make_policy(config.base_policy, features)
        base = make_policy(config.base_policy, features, type(base).config_from_json(config.base_config))
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.base = base.eval()
        self.representation = None
        if config.encoder == "train":
            self.representation = copy.deepcopy(base)
            for parameter in self.representation.parameters():
                parameter.requires_grad_(True)
        self.action_size = features.action.shape[0]
        state_size = features.observations["state"].shape[0]
        privileged = features.observations.get("privileged")
        if config.asymmetric and privileged is None:
            raise ValueError("--asymmetric needs privileged observations, and this policy's data has none")
        self.privileged_size = privileged.shape[0] if privileged is not None else 0
        self.object_positions = privileged.indices("position") if privileged is not None else []
        self.feature_size = self._feature_size()
        self.estimator = None
        if config.refit_positions:
            self._check_refit()
            self.estimator = copy.deepcopy(base.aux_head)
            for parameter in self.estimator.parameters():
                parameter.requires_grad_(True)
        hidden, actions = config.hidden, self.action_size

        actor_in = self.feature_size + (actions if self.uses_base_action else 0)
        self.actor_trunk = nn.Sequential(nn.Linear(actor_in, hidden), nn.LayerNorm(hidden), nn.Tanh())
        self.actor_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, actions))
        self.aux_head = nn.Linear(hidden, max(len(self.object_positions), 1))
        self.critic_normalizer = Normalizer(self.privileged_size + state_size)
        critic_in = (self.privileged_size + state_size if config.asymmetric else self.feature_size) + actions
        self.critics = nn.ModuleList(_critic(critic_in, hidden) for _ in range(config.critics))
        self.target_critics = copy.deepcopy(self.critics)
        for parameter in self.target_critics.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("scale", torch.tensor(float(config.residual_scale)))
        self.reset()

    def _feature_size(self) -> int:
        history = self.base.history
        dummy = {
            key: torch.zeros((1, history, *self.features.observations[key].shape), dtype=_dtype(self.features, key))
            for key in self.base.observation_keys
        }
        with torch.no_grad():
            return int(self.base.encode(dummy, augment=False).shape[-1])

    def _check_refit(self) -> None:
        if self.config.encoder != "frozen":
            raise ValueError(
                "--refit-positions refits the frozen BC encoder's position estimator; use --encoder frozen"
            )
        if not getattr(self.base, "per_frame_positions", False) or "state" not in self.base.observation_keys:
            raise ValueError(
                "--refit-positions needs a BC policy that estimates object positions frame by frame and sees the "
                "state; train it with --bc.trunk-input relative (the default where the data has object positions)"
            )
        if not self.object_positions:
            raise ValueError("--refit-positions needs object positions in the data's privileged state; it has none")

    # ------------------------------------------------------------ per method
    def compose(self, output: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        """The actor's action from its head's raw output and the base policy's action."""
        raise NotImplementedError

    def select(
        self, critic_in: torch.Tensor, base_action: torch.Tensor, proposal: torch.Tensor, target: bool
    ) -> torch.Tensor:
        """The action taken given the actor's proposal (IBRL chooses between it and the base action)."""
        return proposal

    # ------------------------------------------------------------ networks
    def representation_features(self, obs: dict[str, torch.Tensor], augment: bool) -> torch.Tensor:
        if self.representation is None:
            return obs["phi"].float()
        stacked = {key: obs[f"obs/{key}"] for key in self.base.observation_keys}
        return self.representation.encode(stacked, augment=augment)

    def critic_input(self, obs: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
        if self.config.asymmetric:
            return self.critic_normalizer(torch.cat([obs["privileged"], obs["state"]], -1).float())
        return features

    def q_values(self, critic_in: torch.Tensor, action: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Q of every ensemble member, (critics, B)."""
        inputs = torch.cat([critic_in, action], -1)
        critics = self.target_critics if target else self.critics
        return torch.stack([critic(inputs).squeeze(-1) for critic in critics])

    def departure_unit(self) -> float:
        """The unit the prior penalty measures the departure from the base action in."""
        return 1.0

    def actor_hidden(self, features: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([features, base_action], -1) if self.uses_base_action else features
        return self.actor_trunk(inputs)

    def actor_action(self, features: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        return self.compose(self.actor_head(self.actor_hidden(features, base_action)), base_action)

    def fit_critic_normalization(self, privileged: torch.Tensor, state: torch.Tensor) -> None:
        self.critic_normalizer.fit(torch.cat([privileged, state], -1).float())

    # ------------------------------------------------------------ acting
    def reset(self) -> None:
        self.base.reset()

    def perceive(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One env observation to the frame the replay stores (and ``decide`` reads)."""
        base_action, features, stacked = self.base.step(observation)
        frame = {
            "base_action": np.asarray(base_action, dtype=np.float32),
            "state": np.asarray(observation["state"], dtype=np.float32),
        }
        if self.privileged_size:
            frame["privileged"] = np.asarray(observation["privileged"], dtype=np.float32)
        if self.estimator is not None:
            inputs = self.base.recent_estimator_inputs()
            frame["estimator_input"] = inputs[0].float().cpu().numpy()
            frame["history_state"] = stacked["state"][0].float().cpu().numpy()
            if not self.base.true_positions:  # the diagnostic acts on the simulator's positions, as the base does
                with torch.no_grad():
                    features = self.features_from_estimator(inputs, stacked["state"])
        if self.representation is None:
            frame["phi"] = features[0].float().cpu().numpy()
        else:
            frame |= {f"obs/{key}": value[0].cpu().numpy() for key, value in stacked.items()}
        return frame

    def frame_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shapes and dtypes of what ``perceive`` returns, for the replay buffer."""
        spec = self.features.observations
        fields = {"base_action": ((self.action_size,), torch.float32), "state": (spec["state"].shape, torch.float32)}
        if self.privileged_size:
            fields["privileged"] = ((self.privileged_size,), torch.float32)
        if self.estimator is not None:
            history = self.base.history
            fields["estimator_input"] = ((history, self.estimator[0].in_features), torch.float32)
            fields["history_state"] = ((history, *spec["state"].shape), torch.float32)
        if self.representation is None:
            fields["phi"] = ((self.feature_size,), torch.float32)
        else:
            for key in self.base.observation_keys:
                fields[f"obs/{key}"] = ((self.base.history, *spec[key].shape), _dtype(self.features, key))
        return fields

    @torch.no_grad()
    def decide(
        self, frame: dict[str, np.ndarray], noise: float = 0.0, generator: torch.Generator | None = None
    ) -> np.ndarray:
        """The action for one perceived frame, with Gaussian exploration noise of std ``noise``."""
        obs = {key: torch.as_tensor(value, device=self.device).unsqueeze(0) for key, value in frame.items()}
        features = self.representation_features(obs, augment=False)
        proposal = self.actor_action(features, obs["base_action"])
        if noise > 0:
            sample = torch.randn(proposal.shape, generator=generator).to(proposal.device)
            proposal = (proposal + noise * sample).clamp(-1.0, 1.0)
        action = self.select(self.critic_input(obs, features), obs["base_action"], proposal, target=False)
        return action[0].float().cpu().numpy()

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.decide(self.perceive(observation))

    # ------------------------------------------------------------ refitting the position estimator
    def features_from_estimator(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Features (B, F) from the estimator's inputs (B, history, D) and states (B, history, S) of frames."""
        return self.base.features_from_positions(state, self.estimator(inputs.float()))

    def refit_estimator(self, buffers, steps: int, batch_size: int, optimizer, generator: torch.Generator) -> dict:
        """Fit the estimator to the simulator's object positions on every frame the ``buffers`` hold (``steps``
        Adam steps), then rebuild their features with it. Returns the mean distance (mm) between
        estimated and true object positions on those frames, before and after."""
        slots = [buffer.stored_slots() for buffer in buffers]
        inputs = torch.cat([b.frames["estimator_input"][s][:, -1] for b, s in zip(buffers, slots)])
        state = torch.cat([b.frames["state"][s] for b, s in zip(buffers, slots)])
        truth = torch.cat([b.frames["privileged"][s][:, self.base.object_positions] for b, s in zip(buffers, slots)])
        targets = self.base._targets(truth, state)

        def error_mm() -> float:
            with torch.no_grad():
                metres = self.base._metres(self.estimator(inputs), state)
            return float((metres - truth).unflatten(-1, (-1, 3)).norm(dim=-1).mean()) * 1000

        before = error_mm()
        for _ in range(steps):
            pick = torch.randint(len(inputs), (batch_size,), generator=generator, device=generator.device)
            pick = pick.to(inputs.device)
            loss = (self.estimator(inputs[pick]) - targets[pick]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        for buffer in buffers:
            self.rebuild_features(buffer)
        return {"position_error_before_mm": before, "position_error_after_mm": error_mm()}

    @torch.no_grad()
    def rebuild_features(self, buffer) -> None:
        """Rebuild the features of every frame in ``buffer`` with the estimator as it is now."""
        frames = buffer.frames
        for chunk in buffer.stored_slots().split(4096):
            built = self.features_from_estimator(frames["estimator_input"][chunk], frames["history_state"][chunk])
            frames["phi"][chunk] = built.to(frames["phi"].dtype)

    # ------------------------------------------------------------ learning
    def critic_loss(
        self, batch: dict, noise: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """TD loss on a batch of n-step transitions; also returns the (augmented) features for the actor."""
        obs, following = batch["obs"], batch["next_obs"]
        features = self.representation_features(obs, augment=True)
        with torch.no_grad():
            next_features = self.representation_features(following, augment=True)
            next_critic_in = self.critic_input(following, next_features)
            proposal = self.actor_action(next_features, following["base_action"])
            std = max(noise, self.config.target_noise)
            smoothing = torch.randn(proposal.shape, generator=generator, device=generator.device).to(proposal.device)
            proposal = (proposal + (std * smoothing).clamp(-2.5 * std, 2.5 * std)).clamp(-1.0, 1.0)
            next_action = self.select(next_critic_in, following["base_action"], proposal, target=True)
            next_q = self.q_values(next_critic_in, next_action, target=True)
            pair = torch.randperm(len(next_q), generator=generator, device=generator.device)[:2].to(next_q.device)
            target = batch["return"] + batch["discount"] * next_q[pair].min(0).values
        q = self.q_values(self.critic_input(obs, features), batch["action"])
        loss = (q - target).pow(2).mean(1).sum()
        return loss, features, {"critic_loss": loss.item(), "q": q.mean().item(), "target_q": target.mean().item()}

    def actor_loss(self, batch: dict, features: torch.Tensor) -> tuple[torch.Tensor, dict]:
        obs = batch["obs"]
        if not (self.config.asymmetric and self.representation is not None):
            features = (
                features.detach()
            )  # the critic trains the encoder (DrQ-v2); the actor does when the critic cannot
        hidden = self.actor_hidden(features, obs["base_action"])
        action = self.compose(self.actor_head(hidden), obs["base_action"])
        critic_in = self.critic_input(obs, features.detach())
        q = self.q_values(critic_in, action).mean(0)
        loss = -q.mean()
        metrics = {"actor_q": q.mean().item()}
        if self.config.bc_weight > 0 or self.config.prior_weight > 0:
            loss = loss / q.abs().mean().detach().clamp_min(1e-3)
        if self.config.bc_weight > 0 and "is_demo" in batch:
            demo = (batch["is_demo"] & batch["imitate"]).float()  # recorded perturbations are not copied
            imitation = ((action - batch["action"]).pow(2).mean(-1) * demo).sum() / demo.sum().clamp_min(1.0)
            loss = loss + self.config.bc_weight * imitation
            metrics["bc_loss"] = imitation.item()
        if self.config.prior_weight > 0:
            departure = (action - obs["base_action"].to(action.dtype)) / self.departure_unit()
            prior = departure.pow(2).mean()
            loss = loss + self.config.prior_weight * prior
            metrics["prior_loss"] = prior.item()
        if self.config.aux_weight > 0 and self.object_positions:
            index = torch.as_tensor(self.object_positions, device=hidden.device)
            normalised = self.critic_normalizer(torch.cat([obs["privileged"], obs["state"]], -1).float())[:, index]
            aux = (self.aux_head(hidden) - normalised).pow(2).mean()
            loss = loss + self.config.aux_weight * aux
            metrics["aux_loss"] = aux.item()
        return loss, metrics

    def update(self, batch: dict, optimizers, noise: float, update_actor: bool, tau: float, generator) -> dict:
        """One critic step, one actor step (unless ``update_actor`` is off) and a target update; bf16 on CUDA."""
        critic_optimizer, actor_optimizer = optimizers
        autocast = mixed_precision(self.device)
        with autocast:
            critic_loss, features, metrics = self.critic_loss(batch, noise, generator)
        if not torch.isfinite(critic_loss):
            raise FloatingPointError(f"the critic loss is {critic_loss.item()}; no checkpoint of this step is written")
        critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        critic_optimizer.step()
        if update_actor:
            with autocast:
                actor_loss, actor_metrics = self.actor_loss(batch, features)
            if not torch.isfinite(actor_loss):
                raise FloatingPointError(
                    f"the actor loss is {actor_loss.item()}; no checkpoint of this step is written"
                )
            actor_optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()
            actor_optimizer.step()
            metrics |= actor_metrics
        self.update_targets(tau)
        return metrics

    def _encoder_parameters(self) -> list[nn.Parameter]:
        if self.representation is None:
            return []
        return [p for encoder in self.representation.encoders.values() for p in encoder.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        """What the critic loss trains: the critics, and the encoder unless the critic is asymmetric."""
        encoder = [] if self.config.asymmetric else self._encoder_parameters()
        return [*self.critics.parameters(), *encoder]

    def actor_parameters(self) -> list[nn.Parameter]:
        """What the actor loss trains: the actor and auxiliary head, and the encoder when the critic is asymmetric."""
        encoder = self._encoder_parameters() if self.config.asymmetric else []
        return [*self.actor_trunk.parameters(), *self.actor_head.parameters(), *self.aux_head.parameters(), *encoder]

    @torch.no_grad()
    def update_targets(self, tau: float) -> None:
        for target, online in zip(self.target_critics.parameters(), self.critics.parameters()):
            target.lerp_(online, tau)


def _critic(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(inputs, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.LayerNorm(hidden),
        nn.ReLU(),
        nn.Linear(hidden, 1),
    )


def _dtype(features: FeatureSpec, key: str) -> torch.dtype:
    return torch.uint8 if features.observations[key].dtype == "uint8" else torch.float32


def zero_last_layer(head: nn.Sequential) -> None:
    """Start a residual head at exactly zero output, so the agent starts as its base policy."""
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)


def builtin_agents() -> None:
    import robolearn.rl.ibrl  # noqa: F401
    import robolearn.rl.residual  # noqa: F401
    import robolearn.rl.rlpd  # noqa: F401


METHODS = ("rlpd", "ibrl", "residual")
__all__ = ["METHODS", "ActorCritic", "AgentConfig", "builtin_agents", "zero_last_layer"]
