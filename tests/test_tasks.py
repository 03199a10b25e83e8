"""Contract tests: every registered task (built-in and the workspace example) passes the same checks."""

import numpy as np
import pytest

import robolearn
from robolearn.envs import EVALUATION_SEED_START, evaluation_seeds, make, task_names
from robolearn.envs.operator import ScriptedPolicy
from robolearn.rollout import rollout

TASKS = task_names()
SIZE = 48


def scripted_actions(env, seed: int, steps: int) -> list[np.ndarray]:
    """Actions a scripted operator takes in the first ``steps`` steps of episode ``seed``."""
    policy = ScriptedPolicy(env)
    observation, _ = env.reset(seed=seed)
    policy.reset()
    actions = []
    for _ in range(steps):
        actions.append(policy.act(observation))
        observation, *_ = env.step(actions[-1])
    return actions


def run(env, actions):
    trace = []
    for action in actions:
        observation, reward, terminated, truncated, info = env.step(action)
        trace.append((observation, reward, env.get_state()))
    return trace


def assert_same(trace_a, trace_b):
    assert len(trace_a) == len(trace_b)
    for (obs_a, reward_a, state_a), (obs_b, reward_b, state_b) in zip(trace_a, trace_b):
        np.testing.assert_array_equal(state_a, state_b)
        assert reward_a == reward_b
        assert obs_a.keys() == obs_b.keys()
        for key in obs_a:
            np.testing.assert_array_equal(obs_a[key], obs_b[key], err_msg=key)


@pytest.fixture(scope="module", params=TASKS)
def env(request):
    env = make(request.param, cameras=("front", "wrist"), image_size=SIZE)
    yield env
    env.close()


def test_builtin_tasks_are_registered():
    assert {"reach", "push", "lift", "stack"} <= set(TASKS)
    assert len([t for t in TASKS if t != "lift_cylinder"]) >= 5


def test_spec_conformance(env):
    observation, info = env.reset(seed=0)
    features = env.features
    assert set(observation) == set(features.observations)
    assert {"state", "privileged", "rgb/front", "rgb/wrist"} <= set(observation)
    for name, feature in features.observations.items():
        feature.check(name, observation[name])
    assert env.observation_space.contains(observation)
    assert env.action_space.shape == (5,)
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    assert features.observations["rgb/front"].shape == (SIZE, SIZE, 3)
    assert set(info) >= {"is_success", "physics_warning"}
    # The spec survives a JSON round trip (datasets and policies store it).
    assert type(features).from_json(features.to_json()) == features
    # Layouts name every value of the vectors.
    state = features.observations["state"]
    np.testing.assert_allclose(
        observation["state"][state.slice("gripper_position")], env.physics.gripper_position(), atol=1e-6
    )
    action = scripted_actions(env, 0, 1)[0]
    observation, reward, terminated, truncated, info = env.step(action)
    assert env.observation_space.contains(observation)
    assert 0.0 <= reward <= 1.0 and not terminated


def test_same_seed_same_episode(env):
    actions = scripted_actions(env, 3, 15)
    env.reset(seed=3)
    first = run(env, actions)
    env.reset(seed=3)
    second = run(env, actions)
    assert_same(first, second)
    other, _ = env.reset(seed=4)
    assert not np.array_equal(other["privileged"], first[0][0]["privileged"]) or env.task.name == "reach"


def test_exact_state_round_trip(env):
    actions = scripted_actions(env, 5, 30)
    env.reset(seed=5)
    run(env, actions[:12])
    saved = env.get_state()
    original = run(env, actions[12:])
    observation = env.set_state(saved)
    np.testing.assert_array_equal(env.get_state(), saved)
    assert env.steps == 12
    replayed = run(env, actions[12:])
    assert_same(original, replayed)
    # A fresh env of the same task restores the state just as exactly.
    fresh = make(env.task.name, cameras=("front", "wrist"), image_size=SIZE)
    fresh.reset(seed=0)
    fresh_observation = fresh.set_state(saved)
    for key in observation:
        np.testing.assert_array_equal(observation[key], fresh_observation[key])
    assert_same(original, run(fresh, actions[12:]))
    fresh.close()


def test_cameras_show_the_scene(env):
    observation, _ = env.reset(seed=1)
    front, wrist = observation["rgb/front"], observation["rgb/wrist"]
    assert front.std() > 10 and wrist.std() > 10
    assert not np.array_equal(front, wrist)
    view = env.render_camera_image("view", 96)
    assert view.shape == (96, 96, 3) and view.std() > 10


def test_scripted_operator_succeeds(env):
    episodes = [rollout(env, ScriptedPolicy(env), seed, stop_on_success=True) for seed in range(20)]
    assert not any(episode.physics_warning for episode in episodes)
    assert sum(episode.success for episode in episodes) >= 19


@pytest.mark.parametrize(
    "action, message",
    [
        (np.zeros(4), "shape"),
        (np.zeros((1, 5)), "shape"),
        (np.array([0, 0, 1.5, 0, 0]), "outside"),
        (np.array([0, np.nan, 0, 0, 0]), "non-finite"),
        ("up", "numbers"),
    ],
)
def test_bad_actions_are_rejected(env, action, message):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_unseeded_resets_avoid_evaluation_seeds(env):
    env.reset()
    assert env.episode_seed < EVALUATION_SEED_START
    assert evaluation_seeds(3) == [EVALUATION_SEED_START, EVALUATION_SEED_START + 1, EVALUATION_SEED_START + 2]


def test_divergence_ends_the_episode_with_a_flag():
    env = make("lift", cameras=())
    env.reset(seed=0)
    env.data.qvel[:] = 1e12  # as if a bad contact blew up the simulation
    _, _, terminated, _, info = env.step(np.zeros(5))
    assert terminated and info["physics_warning"]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(5))
    env.reset(seed=0)  # and a reset starts a clean episode
    _, _, terminated, _, info = env.step(np.zeros(5))
    assert not terminated and info["physics_warning"] == ""


def test_user_task_found_by_path_and_by_name():
    env = make("envs/lift_cylinder.py", cameras=())
    assert env.task.name == "lift_cylinder"
    assert isinstance(robolearn.make("lift_cylinder", cameras=()), type(env))


def test_unknown_task_and_camera_errors_say_what_exists():
    with pytest.raises(KeyError, match="registered tasks: .*lift"):
        make("lfit")
    with pytest.raises(ValueError, match="cameras: .*front"):
        make("lift", cameras=("top",))


def test_model_selection_episodes_use_their_own_held_out_seeds():
    """Choosing checkpoints never runs a seed `robolearn eval` reports on, and leaves the policy's mode as it was."""
    from robolearn.rollout import SELECTION_SEED_OFFSET, selection_episodes

    env = make("reach", image_size=SIZE)
    policy = ScriptedPolicy(env)
    policy.training = True  # stands in for a torch module being trained
    modes = []
    policy.eval = lambda: (modes.append("eval"), setattr(policy, "training", False))
    policy.train = lambda: (modes.append("train"), setattr(policy, "training", True))
    episodes = selection_episodes(env, policy, 3, stop_on_success=True)
    env.close()
    assert [episode.seed for episode in episodes] == evaluation_seeds(3, offset=SELECTION_SEED_OFFSET)
    assert not set(evaluation_seeds(1000)) & {episode.seed for episode in episodes}
    assert all(episode.success for episode in episodes)  # the scripted operator reaches every time
    assert modes == ["eval", "train"] and policy.training
