"""Contract tests over the policy registry: every registered policy builds from a task's spec,
acts within the action space, and saves and loads to the same actions."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from robolearn import checkpoint
from robolearn.data.store import jsonable
from robolearn.envs import make
from robolearn.policies.base import POLICIES, _builtin_policies, make_policy
from robolearn.policies.bc import BCConfig
from robolearn.rl.agent import AgentConfig

_builtin_policies()
TINY = BCConfig(channels=8, keypoints=8, hidden=32, layers=1, chunk=4, history=2)


def tiny_config(name: str):
    if name == "bc":
        return TINY
    return AgentConfig(base_config=jsonable(asdict(TINY)), hidden=32)


@pytest.fixture(scope="module")
def env():
    env = make("lift", image_size=32)
    yield env
    env.close()


def actions(policy, env, seed: int, steps: int = 6) -> np.ndarray:
    observation, _ = env.reset(seed=seed)
    policy.reset()
    taken = []
    for _ in range(steps):
        taken.append(policy.act(observation))
        observation, *_ = env.step(taken[-1])
    return np.stack(taken)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_contract(name, env, tmp_path):
    torch.manual_seed(0)
    policy = make_policy(name, env.features, tiny_config(name))
    with torch.no_grad():  # random weights everywhere, so a zero-initialised head cannot hide a loading bug
        for parameter in policy.parameters():
            parameter.normal_(0.0, 0.2)
    policy.eval()
    first = actions(policy, env, seed=7)
    assert first.shape == (6, 5) and first.dtype == np.float32 and np.abs(first).max() <= 1.0
    np.testing.assert_array_equal(first, actions(policy, env, seed=7))  # deterministic from a seed

    checkpoint.write_config(tmp_path, policy, {"task": {"id": "lift"}, "env": {"image_size": 32}})
    checkpoint.save_weights(tmp_path / "model.safetensors", policy.state_dict())
    loaded = checkpoint.load_policy(tmp_path, "model")
    assert type(loaded) is type(policy)
    np.testing.assert_array_equal(first, actions(loaded, env, seed=7))


def test_bc_finer_keypoint_map_and_dropout_round_trip(env, tmp_path):
    from dataclasses import replace

    images = torch.zeros(1, 3, 32, 32)
    coarse = make_policy("bc", env.features, TINY)
    assert coarse.encoders["front"].net(images).shape[-2:] == (8, 8)
    torch.manual_seed(0)
    policy = make_policy("bc", env.features, replace(TINY, strides=(2, 1, 1), dropout=0.2))
    assert policy.encoders["front"].net(images).shape[-2:] == (16, 16)
    assert any(isinstance(module, torch.nn.Dropout) for module in policy.trunk)
    policy.eval()  # dropout is off when acting: the same seed gives the same actions
    first = actions(policy, env, seed=3)
    np.testing.assert_array_equal(first, actions(policy, env, seed=3))
    checkpoint.write_config(tmp_path, policy, {"task": {"id": "lift"}, "env": {"image_size": 32}})
    checkpoint.save_weights(tmp_path / "model.safetensors", policy.state_dict())
    loaded = checkpoint.load_policy(tmp_path, "model")
    assert loaded.config.strides == (2, 1, 1) and loaded.config.dropout == 0.2
    np.testing.assert_array_equal(first, actions(loaded, env, seed=3))
    with pytest.raises(ValueError, match="three strides of 1 or 2, found \\(2, 3, 1\\)"):
        make_policy("bc", env.features, replace(TINY, strides=(2, 3, 1)))
