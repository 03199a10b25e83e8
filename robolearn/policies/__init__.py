"""Policies: one file per family, sharing the interface in ``base`` and the layers in ``layers``."""

from robolearn.policies.base import POLICIES, Policy, make_policy, register_policy

__all__ = ["POLICIES", "Policy", "make_policy", "register_policy"]
