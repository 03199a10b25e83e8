"""``ibrl``: imitation-bootstrapped RL (Hu et al. 2023).

The frozen BC policy and a fresh RL actor both propose an action; the critic
takes the one with the higher value, both for acting and for the TD target. Early
on the BC proposal wins wherever the RL actor is still poor, so the data is good
from the start; as the RL actor improves it takes over. The RL actor is a ``tanh``
MLP over the BC features and the BC action; exploration noise goes on its proposal.
"""

from __future__ import annotations

import torch

from robolearn.policies.base import register_policy
from robolearn.rl.agent import ActorCritic


@register_policy("ibrl")
class IBRLAgent(ActorCritic):
    def compose(self, output: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
        return torch.tanh(output)

    def select(
        self, critic_in: torch.Tensor, base_action: torch.Tensor, proposal: torch.Tensor, target: bool
    ) -> torch.Tensor:
        candidates = torch.stack([base_action.to(proposal.dtype), proposal])  # (2, B, A)
        values = torch.stack([self.q_values(critic_in, c, target=target).min(0).values for c in candidates])
        choice = values.argmax(0)  # (B,) 0: BC, 1: RL
        return candidates[choice, torch.arange(len(choice), device=choice.device)]
