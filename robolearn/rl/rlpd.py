"""``rlpd``: fine-tune the whole behaviour-cloned policy with RL, demonstrations in every critic batch.

The RLPD recipe (Ball et al. 2023): each batch is half online replay, half
demonstrations (symmetric sampling), LayerNorm critics in an ensemble, and a
tunable update-to-data ratio. Here the actor starts as the BC policy: it sees the
BC features and the BC action and outputs ``clip(a_bc + delta)`` with ``delta``
starting at exactly zero and unbounded, so RL may move the policy anywhere.

With ``from_bc=False`` (``robolearn finetune --mode scratch``) the actor is a fresh
``tanh`` MLP that never sees the BC action: RL from scratch on the same
demonstrations, the baseline every BC-based method must beat.
"""

from __future__ import annotations

import torch

from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import register_policy
from robolearn.rl.agent import ActorCritic, AgentConfig, zero_last_layer


@register_policy("rlpd")
class RLPDAgent(ActorCritic):
    def __init__(self, features: FeatureSpec, config: AgentConfig) -> None:
        self.uses_base_action = config.from_bc
        super().__init__(features, config)
        if config.from_bc:
            zero_last_layer(self.actor_head)

    def compose(self, output: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        if self.config.from_bc:
            return (base_action + output).clamp(-1.0, 1.0)
        return torch.tanh(output)
