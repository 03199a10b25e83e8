"""Contract tests over the policy registry: every registered policy builds from a task's spec,
acts within the action space, and saves and loads to the same actions."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

from robolearn import checkpoint
from robolearn.data.store import jsonable
from robolearn.envs import make
from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import POLICIES, _builtin_policies, make_policy
from robolearn.policies.bc import BCConfig
from robolearn.rl.agent import AgentConfig

_builtin_policies()
TINY = BCConfig(channels=8, keypoints=8, hidden=32, layers=1, chunk=4, history=2, trunk_input="features")


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


def test_bc_sees_only_the_chosen_state_entries(env, tmp_path):
    from dataclasses import replace

    torch.manual_seed(0)
    config = replace(TINY, state_features=("gripper_position", "gripper_opening"))
    policy = make_policy("bc", env.features, config).eval()
    assert policy.state_normalizer.mean.shape == (4,)
    observation, _ = env.reset(seed=5)
    stacked = {key: torch.stack([torch.as_tensor(observation[key])] * 2)[None] for key in policy.observation_keys}
    state = env.features.observations["state"]
    changed = dict(stacked, state=stacked["state"].clone())
    changed["state"][..., state.slice("joint_positions")] += 0.5  # not chosen: no effect
    changed["state"][..., state.slice("gripper_quaternion")] *= -1.0
    with torch.no_grad():
        np.testing.assert_array_equal(policy.predict(stacked), policy.predict(changed))
    moved = dict(stacked, state=stacked["state"].clone())
    moved["state"][..., state.slice("gripper_position")] += 0.05  # chosen: the prediction moves
    assert not torch.equal(policy.predict(stacked), policy.predict(moved))

    checkpoint.write_config(tmp_path, policy, {"task": {"id": "lift"}, "env": {"image_size": 32}})
    checkpoint.save_weights(tmp_path / "model.safetensors", policy.state_dict())
    loaded = checkpoint.load_policy(tmp_path, "model")
    assert loaded.config.state_features == ("gripper_position", "gripper_opening")
    np.testing.assert_array_equal(actions(policy, env, seed=5), actions(loaded, env, seed=5))
    with pytest.raises(ValueError, match="\\['wrist_speed'\\] are not in the data's state layout; it has"):
        make_policy("bc", env.features, replace(TINY, state_features=("wrist_speed",)))


def test_bc_trunk_sees_only_predicted_positions(env, tmp_path):
    from dataclasses import replace

    with pytest.raises(ValueError, match="set --bc.aux-weight > 0"):
        replace(TINY, trunk_input="positions", aux_weight=0.0)
    torch.manual_seed(0)
    policy = make_policy("bc", env.features, replace(TINY, trunk_input="positions", aux_weight=1.0))
    positions = len(env.features.observations["privileged"].indices("position"))  # cube
    state = env.features.observations["state"].shape[0]
    assert policy.trunk[0].in_features == TINY.history * (positions + state)
    observation, _ = env.reset(seed=2)
    keys = policy.training_keys
    stacked = {
        f"obs/{key}": torch.stack([torch.as_tensor(observation[key])] * 2)[None].repeat(
            3, 1, *[1] * observation[key].ndim
        )
        for key in keys
    }
    batch = stacked | {"actions": torch.zeros(3, TINY.chunk, 5), "action_mask": torch.ones(3, TINY.chunk)}
    policy.train()
    encoded, predicted = policy._encode({key[4:]: value for key, value in stacked.items()}, augment=True)
    assert predicted.shape == (3, TINY.history, positions)
    assert not encoded.requires_grad  # the imitation loss cannot reach the encoders through the positions
    loss, metrics = policy.loss(batch)
    loss.backward()
    assert "aux" in metrics and all(p.grad is not None for p in policy.encoders.parameters())

    policy.eval()
    checkpoint.write_config(tmp_path, policy, {"task": {"id": "lift"}, "env": {"image_size": 32}})
    checkpoint.save_weights(tmp_path / "model.safetensors", policy.state_dict())
    loaded = checkpoint.load_policy(tmp_path, "model")
    np.testing.assert_array_equal(actions(policy, env, seed=2), actions(loaded, env, seed=2))


def test_bc_relative_trunk_sees_where_things_are_from_the_gripper():
    from dataclasses import replace

    from robolearn.policies.bc import relations

    # Two objects: each minus the gripper, the second minus the first, then the gripper's height.
    objects = torch.tensor([[0.1, 0.0, 0.02, 0.0, 0.2, 0.001]])
    gripper = torch.tensor([[0.0, 0.0, 0.3]])
    expected = [0.1, 0.0, -0.28, 0.0, 0.2, -0.299, -0.1, 0.2, -0.019, 0.3]
    np.testing.assert_allclose(relations(objects, gripper)[0], expected, atol=1e-6)

    with pytest.raises(ValueError, match="set --bc.aux-weight > 0"):
        replace(TINY, trunk_input="relative", aux_weight=0.0)
    with pytest.raises(ValueError, match="keep use_state"):
        replace(TINY, trunk_input="relative", aux_weight=1.0, use_state=False)
    env = make("push", image_size=32)
    try:
        torch.manual_seed(0)
        config = replace(TINY, trunk_input="relative", aux_weight=1.0, state_features=("gripper_opening",))
        policy = make_policy("bc", env.features, config)
        state = env.features.observations["state"]
        # cube and goal: 2 object-gripper vectors, 1 goal-cube vector, the height, the opening
        assert policy.trunk[0].in_features == TINY.history * (9 + 1 + 1)
        assert policy.aux_head[0].in_features == 2 * TINY.keypoints * 2 + state.shape[0]  # whole state
        observation, _ = env.reset(seed=3)
        stacked = {
            f"obs/{key}": torch.as_tensor(observation[key])[None, None].repeat(4, 2, *[1] * observation[key].ndim)
            for key in policy.training_keys
        }
        policy.fit_normalization(stacked)
        policy.train()
        encoded, predicted = policy._encode({key[4:]: value for key, value in stacked.items()}, augment=True)
        assert predicted.shape == (4, TINY.history, 6) and not encoded.requires_grad
        # Moving the arm elsewhere without changing the estimate moves every relation to the gripper.
        moved = dict(stacked, **{"obs/state": stacked["obs/state"].clone()})
        moved["obs/state"][..., state.slice("gripper_position")] += torch.tensor([0.05, 0.0, 0.0])
        policy.eval()
        with torch.no_grad():
            before = policy._encode({k[4:]: v for k, v in stacked.items()}, augment=False)[0]
            policy.aux_head[-1].weight.zero_()  # estimates no longer depend on the state
            before = policy._encode({k[4:]: v for k, v in stacked.items()}, augment=False)[0]
            after = policy._encode({k[4:]: v for k, v in moved.items()}, augment=False)[0]
        shift = (after - before).view(4, TINY.history, -1)[0, 0, :10] * policy.relative_normalizer.std
        np.testing.assert_allclose(shift[[0, 3]], [-0.05, -0.05], atol=1e-5)  # object x minus gripper x
        np.testing.assert_allclose(shift[[1, 2, 4, 5, 6, 7, 8, 9]], 0.0, atol=1e-5)
        # --positions true (a diagnostic): the trunk sees the privileged object positions, not the estimates.
        far = dict(observation, privileged=observation["privileged"].copy())
        far["privileged"][policy.object_positions[:3]] += np.float32(0.1)  # the cube 10 cm off in x, y and z

        def action(obs, true_positions):
            policy.reset()
            policy.true_positions = true_positions
            return policy.act(obs)

        assert np.array_equal(action(observation, False), action(far, False))  # estimates: pixels only
        assert not np.allclose(action(observation, True), action(far, True))
        policy.true_positions = False
        # The trunk learns from the recorded positions: the estimator's output does not reach the imitation loss.
        batch = dict(stacked, actions=torch.rand(4, TINY.chunk, 5), action_mask=torch.ones(4, TINY.chunk))
        mse = []
        for scale in (1.0, 3.0):
            policy.aux_head[-1].bias.data.fill_(scale)
            mse.append(policy.loss(batch)[1]["mse"])
        assert mse[0] == mse[1]
        policy.config = replace(policy.config, trunk_positions="estimated")
        policy.aux_head[-1].bias.data.fill_(1.0)
        assert policy.loss(batch)[1]["mse"] != mse[0]
        truth = torch.as_tensor(observation["privileged"][policy.object_positions])[None, None].repeat(4, 2, 1)
        with torch.no_grad():
            shown = policy._encode({k[4:]: v for k, v in stacked.items()}, False, truth)[0].view(4, 2, -1)
        relative = relations(truth, stacked["obs/state"][..., state.slice("gripper_position")])
        np.testing.assert_allclose(shown[..., :10], policy.relative_normalizer(relative), atol=1e-5)
    finally:
        env.close()


def test_bc_scale_floor_bounds_what_the_trunk_and_the_estimator_are_normalised_by():
    from dataclasses import replace

    with pytest.raises(ValueError, match="--bc.scale-floor must be above 0"):
        replace(TINY, scale_floor=0.0)
    env = make("push", image_size=32)
    try:
        # Four scenes: the cube rests on the table and the fingers are closed in all of them, so the
        # goal-minus-cube height and the opening barely vary; the hand's yaw does.
        observations = [env.reset(seed=seed)[0] for seed in range(4)]
        stacked = {
            f"obs/{key}": torch.as_tensor(np.stack([o[key] for o in observations]))[:, None].repeat(1, 2, 1)
            for key in ("state", "privileged")
        }
        features = ("gripper_opening", "gripper_quaternion")
        config = replace(TINY, trunk_input="relative", aux_weight=1.0, state_features=features)
        stds = {}
        for floor in (0.001, 0.01):
            policy = make_policy("bc", env.features, replace(config, scale_floor=floor))
            policy.fit_normalization(stacked)
            stds[floor] = {
                "relative": policy.relative_normalizer.std.clone(),
                "positions": policy.position_normalizer.std.clone(),
                "state": policy.state_normalizer.std.clone(),
            }
            trunk_state = policy.state_normalizer.std[policy.state_indices]
            for std in (stds[floor]["relative"], stds[floor]["positions"], trunk_state):
                assert float(std.min()) >= floor * (1 - 1e-6)
        low, high = stds[0.001], stds[0.01]
        assert float(low["relative"][8]) == pytest.approx(0.001)  # goal z minus cube z: the floor itself
        assert float(high["relative"][8]) == pytest.approx(0.01)
        # What varies more than the floor keeps its spread; state entries the trunk does not see keep theirs.
        assert torch.equal(low["relative"][:2], high["relative"][:2])
        seen = torch.zeros(len(low["state"]), dtype=torch.bool)
        seen[policy.state_indices] = True
        assert torch.equal(low["state"][~seen], high["state"][~seen])
    finally:
        env.close()


def test_bc_estimates_horizontal_offsets_from_the_gripper(tmp_path):
    from dataclasses import replace

    env = make("push", image_size=32)
    try:
        torch.manual_seed(0)
        config = replace(
            TINY, trunk_input="relative", aux_weight=1.0, state_features=("gripper_opening",), position_frame="gripper"
        )
        policy = make_policy("bc", env.features, config)
        state = env.features.observations["state"]
        observation, _ = env.reset(seed=4)
        stacked = {
            f"obs/{key}": torch.as_tensor(observation[key])[None, None].repeat(3, 2, *[1] * observation[key].ndim)
            for key in policy.training_keys
        }
        stacked["obs/state"][..., state.slice("gripper_position")] += torch.rand(3, 2, 3) * 0.1
        policy.fit_normalization(stacked)
        truth = stacked["obs/privileged"][..., policy.object_positions].float()
        gripper = stacked["obs/state"][..., state.slice("gripper_position")].float()
        # The targets are the objects' x, y from the gripper and their world heights, and come back exactly.
        targets = policy.position_normalizer.inverse(policy._targets(truth, stacked["obs/state"]))
        expected = truth - torch.cat([gripper[..., :2], torch.zeros_like(gripper[..., 2:])], -1).repeat(1, 1, 2)
        torch.testing.assert_close(targets, expected)
        torch.testing.assert_close(
            policy._metres(policy._targets(truth, stacked["obs/state"]), stacked["obs/state"]), truth
        )
        # An estimate that ignores the pixels follows the gripper in x and y, not in height.
        policy.eval()
        policy.aux_head[-1].weight.data.zero_()
        observations = {key[4:]: value for key, value in stacked.items()}
        moved = dict(observations, state=observations["state"].clone())
        moved["state"][..., state.slice("gripper_position")] += torch.tensor([0.03, -0.02, 0.05])
        shift = policy.estimated_positions(moved) - policy.estimated_positions(observations)
        torch.testing.assert_close(shift, torch.tensor([0.03, -0.02, 0.0]).repeat(3, 2, 2))

        checkpoint.write_config(tmp_path, policy, {"task": {"id": "push"}, "env": {"image_size": 32}})
        checkpoint.save_weights(tmp_path / "model.safetensors", policy.state_dict())
        assert checkpoint.load_policy(tmp_path, "model").config.position_frame == "gripper"
        # A policy saved before the setting existed estimated world positions (the default), and still does.
        saved = json.loads((tmp_path / "config.json").read_text())
        del saved["policy_config"]["position_frame"]
        (tmp_path / "config.json").write_text(json.dumps(saved))
        assert checkpoint.load_policy(tmp_path, "model").config.position_frame == "world"
        with pytest.raises(ValueError, match="position-frame gripper measures from the gripper's position"):
            replace(TINY, position_frame="gripper", use_state=False)
    finally:
        env.close()


def test_static_positions_hold_the_first_frames_estimate(tmp_path):
    from dataclasses import replace

    from robolearn.data.store import DemoStore
    from robolearn.record import RecordConfig
    from robolearn.record import run as record
    from robolearn.train import static_positions

    env = make("push", image_size=32)
    try:
        # Found in the data: the goal marker never moves, the cube does; lift has nothing static.
        for task, expected in (("push", ("goal_position",)), ("lift", ())):
            record(RecordConfig(task=task, out=tmp_path / task, episodes=2, image_size=16, workers=1))
            store = DemoStore(tmp_path / task)
            assert static_positions(store, FeatureSpec.from_json(store.meta["features"])) == expected
        config = replace(TINY, trunk_input="relative", aux_weight=1.0, static_positions=("goal_position",))
        with pytest.raises(ValueError, match="not object positions in the data's privileged state"):
            make_policy("bc", env.features, replace(config, static_positions=("cube_quaternion",)))
        policy = make_policy("bc", env.features, replace(config, static_frames=2))
        seen, estimates = [], []
        observation, _ = env.reset(seed=1)
        policy.reset()
        for _ in range(4):
            frame = {key: torch.as_tensor(observation[key])[None, None] for key in policy.observation_keys}
            estimates.append(policy.estimated_positions(frame)[0, 0])
            _, _, positions = policy._perceive(frame, augment=False)
            seen.append(policy._positions_now(observation, positions)[0, 0])
            observation, *_ = env.step(env.action_space.sample())
        goal, cube = slice(3, 6), slice(0, 3)
        held = (estimates[0][goal] + estimates[1][goal]) / 2
        for step in (1, 2, 3):  # the mean of the first two frames' estimates, then held
            torch.testing.assert_close(seen[step][goal], held)
        torch.testing.assert_close(seen[0][goal], estimates[0][goal])
        for step in range(4):  # moving objects: each frame's own estimate
            torch.testing.assert_close(seen[step][cube], estimates[step][cube])
        assert np.all(np.isfinite(policy.act(observation)))
    finally:
        env.close()


def test_unshift_takes_the_random_shift_back_out_of_the_keypoints():
    from robolearn.policies.layers import SpatialSoftmax, shift_images

    # One bright pixel per image: the shifted copy moves it by the reported amount.
    images = torch.zeros(6, 1, 16, 16)
    images[:, 0, 7, 9] = 1.0
    torch.manual_seed(0)
    shifted, moved = shift_images(images, 3)
    assert moved.shape == (6, 2) and moved.abs().max() <= 3 and moved.abs().sum() > 0
    for image, (dx, dy) in zip(shifted, moved.long().tolist()):
        assert image[0, 7 + dy, 9 + dx] == 1.0
    # On a full-resolution map the correction is exact: the keypoint is where the pixel was before the shift.
    pool = SpatialSoftmax(1, 1)
    with torch.no_grad():
        pool.project.weight.fill_(1.0)
        pool.project.bias.zero_()
        pool.temperature.fill_(0.01)
        plain = pool(images[:1])
        np.testing.assert_allclose(pool(shifted, moved, (16, 16)), plain.expand(6, 2), atol=1e-4)
        assert not torch.allclose(pool(shifted), plain.expand(6, 2), atol=1e-2)
    assert shift_images(images, 0)[0] is images


def test_bc_defaults_follow_the_data(env):
    from dataclasses import replace

    from robolearn.envs.spec import FeatureSpec

    # A robolearn task records object positions and the gripper's: the measured recipe (benchmarks/bc.py).
    defaults = BCConfig(channels=8, keypoints=8, hidden=32, layers=1)
    policy = make_policy("bc", env.features, defaults)
    assert policy.config.trunk_input == "relative" and policy.config.aux_weight == 1.0
    assert policy.config.state_features == ("gripper_opening",)
    # What is saved with the policy is the decision, so a saved policy rebuilds the same whatever the defaults.
    assert policy.config_json()["trunk_input"] == "relative" and defaults.trunk_input == "auto"
    # Choices made on the command line stand.
    chosen = make_policy("bc", env.features, replace(defaults, state_features=(), aux_weight=0.5))
    assert chosen.config.state_features == () and chosen.config.aux_weight == 0.5
    assert make_policy("bc", env.features, replace(defaults, use_state=False)).config.trunk_input == "features"
    # No auxiliary loss asked for: nothing can teach the positions, so the encoders' features.
    unaided = make_policy("bc", env.features, replace(defaults, aux_weight=0.0)).config
    assert (unaided.trunk_input, unaided.aux_weight, unaided.state_features) == ("features", 0.0, ())
    # Data without object positions (an import of image-only data): encoder features and the whole state.
    observations = {name: f for name, f in env.features.observations.items() if name != "privileged"}
    plain = make_policy("bc", FeatureSpec(observations, env.features.action), defaults)
    assert (plain.config.trunk_input, plain.config.aux_weight, plain.config.state_features) == ("features", 0.0, ())
    observation, _ = env.reset(seed=0)
    assert plain.act(observation).shape == policy.act(observation).shape == (5,)
