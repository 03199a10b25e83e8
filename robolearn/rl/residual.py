"""``residual``: a bounded residual actor on top of the frozen BC policy.

The action is ``clip(a_bc + scale * tanh(r(features, a_bc)))``: the BC policy (with
its history, chunking and temporal ensemble) stays in charge and RL learns a
correction of at most ``scale`` per action dimension. ``r`` starts at exactly zero
and the fine-tuning loop ramps ``scale`` from 0 to its maximum over the hand-over
period, so early, poorly-trained critics cannot wreck a working policy. Because the
base is only queried, this is how chunked or diffusion policies are fine-tuned.
"""

from __future__ import annotations

import torch

from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import register_policy
from robolearn.rl.agent import ActorCritic, AgentConfig, zero_last_layer


@register_policy("residual")
class ResidualAgent(ActorCritic):
    def __init__(self, features: FeatureSpec, config: AgentConfig) -> None:
        super().__init__(features, config)
        zero_last_layer(self.actor_head)

    def compose(self, output: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        return (base_action + self.scale * torch.tanh(output)).clamp(-1.0, 1.0)

    def departure_unit(self) -> float:
        return self.config.residual_scale
