"""RL fine-tuning end to end on a tiny policy: finite losses, changed weights, exact demo resets,
no privileged input to the actor, exact resume, and an output folder that `robolearn eval` reads."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from robolearn.checkpoint import load_policy, load_weights, read_config
from robolearn.evaluate import EvalConfig, act_on_true_positions
from robolearn.evaluate import run as evaluate
from robolearn.finetune import FinetuneConfig, make_training_env
from robolearn.finetune import run as finetune
from robolearn.policies.bc import BCConfig
from robolearn.record import RecordConfig
from robolearn.record import run as record
from robolearn.rl.buffer import ReplayBuffer, n_step_targets
from robolearn.rl.collect import DemoStates, Start, demonstration_episodes, run_episode, shaped_rewards
from robolearn.train import TrainConfig
from robolearn.train import run as train

TINY_BC = BCConfig(channels=8, keypoints=8, hidden=32, layers=1, chunk=4, history=2, trunk_input="features")


@pytest.fixture(scope="module")
def bc_policy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    dataset = root / "demos" / "lift"
    record(RecordConfig(task="lift", out=dataset, episodes=3, image_size=32, workers=1))
    return train(
        TrainConfig(dataset=dataset, out=root / "lift-bc", steps=10, batch_size=8, eval_every=-1, warmup=2, bc=TINY_BC)
    )


@pytest.fixture(scope="module")
def relative_bc(bc_policy, tmp_path_factory):
    """A tiny BC policy that estimates object positions frame by frame (trunk input relative)."""
    dataset = read_config(bc_policy)["dataset"]["path"]
    relative = replace(TINY_BC, trunk_input="relative", aux_weight=1.0, state_features=("gripper_opening",))
    out = tmp_path_factory.mktemp("relative") / "bc"
    return train(
        TrainConfig(dataset=dataset, out=out, steps=4, batch_size=8, eval_every=-1, warmup=1, scenes=8, bc=relative)
    )


def tiny(policy, out, **overrides) -> FinetuneConfig:
    settings = dict(
        steps=160, eval_every=80, eval_episodes=1, batch_size=16, hidden=32, critic_warmup=40, handover=80, seed=3
    )
    settings.update(overrides)
    return FinetuneConfig(policy=policy, out=out, **settings)


def log_rows(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "mode, options",
    [
        ("residual", {"asymmetric": True, "aux_weight": 0.5, "reset_from_demos": "reverse", "prior_weight": 1.0}),
        ("ibrl", {"reset_from_demos": "uniform", "demo_reset_prob": 1.0, "bc_weight": 1.0}),
        ("scratch", {"encoder": "train"}),
        ("rlpd", {"workers": 2, "reward": "shaped"}),
    ],
)
def test_finetune_learns_and_writes_an_evaluable_policy(bc_policy, tmp_path, mode, options):
    out = finetune(tiny(bc_policy, tmp_path / mode, mode=mode, **options))
    rows = log_rows(out)
    assert [row["env_steps"] for row in rows][0] == 0 and rows[-1]["env_steps"] >= 160
    assert all(math.isfinite(row["critic_loss"]) for row in rows[1:])
    if mode == "residual":
        assert all(math.isfinite(row["aux_loss"]) and math.isfinite(row["prior_loss"]) for row in rows[1:])
    if mode == "ibrl":
        assert all(math.isfinite(row["bc_loss"]) for row in rows[1:])
    names = {path.name for path in out.iterdir()}
    assert {"config.json", "model.safetensors", "best.safetensors", "curve.csv", "curve.png"} <= names
    assert {"training_state.safetensors", "training_state.json", "log.jsonl"} <= names
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "curve.csv").read_text().splitlines()) == len(rows) + 1

    start, end = load_weights(out / "best.safetensors"), load_weights(out / "model.safetensors")  # best = start here
    changed = [key for key in end if key.startswith(("critics.", "actor_")) and not torch.equal(start[key], end[key])]
    assert any(key.startswith("critics.") for key in changed) and any(key.startswith("actor_") for key in changed)
    base = load_policy(bc_policy, "best").state_dict()
    assert all(torch.equal(end[f"base.{key}"], value) for key, value in base.items())  # the BC policy stays frozen

    config = read_config(out)
    assert config["policy"] == ("rlpd" if mode == "scratch" else mode) and config["task"]["id"] == "lift"
    metrics = evaluate(EvalConfig(out, episodes=2, weights="model"))
    assert metrics["episodes"] == 2 and 0.0 <= metrics["success_rate"] <= 1.0


def test_residual_agent_starts_as_its_bc_policy(bc_policy, tmp_path):
    out = finetune(tiny(bc_policy, tmp_path / "res", mode="residual", steps=20, until=20, eval_every=1000))
    agent = load_policy(out, "best")  # the weights at the start
    bc = load_policy(bc_policy, "best")
    env = make_training_env("lift", None, read_config(out)["env"], "sparse")
    for policy in (agent, bc):
        observation, _ = env.reset(seed=11)
        policy.reset()
        actions = []
        for _ in range(5):
            actions.append(policy.act(observation))
            observation, *_ = env.step(actions[-1])
        policy.actions = np.stack(actions)
    np.testing.assert_allclose(agent.actions, bc.actions, atol=1e-6)
    env.close()


def test_prior_penalty_measures_the_residual_in_units_of_its_bound(bc_policy, tmp_path):
    out = finetune(tiny(bc_policy, tmp_path / "res", mode="residual", steps=20, until=20, eval_every=1000))
    agent = load_policy(out, "best")
    agent.config.prior_weight = 1.0
    scale = agent.config.residual_scale
    env = make_training_env("lift", None, read_config(out)["env"], "sparse")
    observation, _ = env.reset(seed=2)
    agent.reset()
    frame = {key: torch.as_tensor(value)[None] for key, value in agent.perceive(observation).items()}
    frame["base_action"] = torch.zeros_like(frame["base_action"])  # no clipping at the bounds
    _, metrics = agent.actor_loss({"obs": frame}, frame["phi"])
    assert metrics["prior_loss"] == 0.0  # the residual starts at exactly zero
    torch.nn.init.constant_(agent.actor_head[-1].bias, math.atanh(0.5))  # a residual of half its bound
    agent.scale.fill_(scale)
    _, metrics = agent.actor_loss({"obs": frame}, frame["phi"])
    assert metrics["prior_loss"] == pytest.approx(0.25, rel=1e-5)
    env.close()


class StandIn:  # an agent that keeps the proprioception and holds still
    def reset(self):
        pass

    def perceive(self, observation):
        return {"state": observation["state"]}

    def decide(self, frame, noise, generator):
        return np.zeros(5, np.float32)


def test_demo_state_resets_restore_the_recorded_states(bc_policy, tmp_path):
    dataset = read_config(bc_policy)["dataset"]["path"]
    demos = DemoStates(dataset)
    env = make_training_env("lift", None, read_config(bc_policy)["env"], "sparse")
    for episode, step in [(0, 0), (1, 7), (2, demos.lengths()[2] - 1)]:
        env.reset(seed=99)
        env.set_state(demos.states(episode)[step])
        np.testing.assert_array_equal(env.get_state(), demos.states(episode)[step])

    class Recorder(StandIn):  # records the first observation it sees
        def reset(self):
            self.first = None

        def perceive(self, observation):
            if self.first is None:
                self.first = observation
            return super().perceive(observation)

    recorder = Recorder()
    run_episode(env, recorder, Start(seed=5, demo=(1, 7)), 0.0, 0, demos)
    with np.load(demos.paths[1]) as archive:
        np.testing.assert_array_equal(recorder.first["state"], archive["obs/state"][7])
        np.testing.assert_array_equal(recorder.first["rgb/front"], archive["obs/rgb/front"][7])
    early = [demos.sample(np.random.default_rng(i), window=0.1) for i in range(50)]
    assert all(step >= math.floor(0.9 * (demos.lengths()[e] - 1)) for e, step in early)
    env.close()


def discounted(rewards, gamma):
    return float(np.sum(rewards * gamma ** np.arange(len(rewards))))


def test_shaped_rewards_are_success_plus_a_telescoping_potential(bc_policy):
    config, gamma = read_config(bc_policy), 0.9
    env = make_training_env("lift", None, config["env"], "shaped")
    assert env.reward_type == "dense" and env.terminate_on_success

    # Exploration: the potentials are the dense rewards of the episode's states, the first read at the start.
    env.reset(seed=5)
    start = env.dense_reward()
    episode = run_episode(env, StandIn(), Start(seed=5), 0.0, 0)
    assert len(episode.potentials) == len(episode) + 1 and episode.potentials[0] == pytest.approx(start)
    np.testing.assert_array_equal(episode.potentials[1:], episode.rewards)
    shaped = shaped_rewards(episode, gamma)
    expected = float(episode.success) * gamma ** (len(episode) - 1)
    expected += gamma ** len(episode) * episode.potentials[-1] - episode.potentials[0]
    assert discounted(shaped, gamma) == pytest.approx(expected, abs=1e-5)

    # Demonstrations: the first potential from the recorded state, the others from the recorded rewards.
    dataset = config["dataset"]["path"]
    demos = demonstration_episodes(dataset, StandIn(), "shaped", env)
    with np.load(DemoStates(dataset).paths[0]) as archive:
        env.set_state(archive["states"][0])
        steps = len(demos[0])
        np.testing.assert_array_equal(demos[0].potentials[1:], archive["rewards"][:steps])
    assert demos[0].potentials[0] == pytest.approx(env.dense_reward())
    assert demos[0].success and demos[0].potentials[-1] == 1.0  # scripted lift demonstrations succeed
    shaped = shaped_rewards(demos[0], gamma)
    expected = gamma ** (steps - 1) + gamma**steps - demos[0].potentials[0]
    assert discounted(shaped, gamma) == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="need an env"):
        demonstration_episodes(dataset, StandIn(), "shaped")
    env.close()


def test_privileged_state_never_feeds_the_actor(bc_policy, tmp_path):
    out = finetune(tiny(bc_policy, tmp_path / "asym", mode="rlpd", asymmetric=True, steps=80, eval_every=1000))
    agent = load_policy(out, "model")
    env = make_training_env("lift", None, read_config(out)["env"], "sparse")
    observation, _ = env.reset(seed=4)
    agent.reset()
    frame = agent.perceive(observation)
    shuffled = dict(
        frame, privileged=np.random.default_rng(0).normal(size=frame["privileged"].shape).astype(np.float32)
    )
    np.testing.assert_array_equal(agent.decide(frame), agent.decide(shuffled))
    # ... while the critic does read it
    obs = {key: torch.as_tensor(value)[None] for key, value in frame.items()}
    other = {key: torch.as_tensor(value)[None] for key, value in shuffled.items()}
    action = torch.zeros(1, 5)
    assert not torch.equal(
        agent.q_values(agent.critic_input(obs, obs["phi"]), action),
        agent.q_values(agent.critic_input(other, other["phi"]), action),
    )
    env.close()
    with pytest.raises(ValueError, match="cannot see privileged"):
        tiny(bc_policy, tmp_path / "x", mode="ibrl", asymmetric=True)


def test_resume_continues_exactly(bc_policy, tmp_path):
    straight = finetune(tiny(bc_policy, tmp_path / "straight", mode="rlpd"))
    finetune(tiny(bc_policy, tmp_path / "resumed", mode="rlpd", until=80))
    resumed = finetune(tiny(bc_policy, tmp_path / "resumed", mode="rlpd", resume=True))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(log_rows(straight)) == strip(log_rows(resumed))
    a, b = load_weights(straight / "model.safetensors"), load_weights(resumed / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)
    with pytest.raises(ValueError, match="already holds a fine-tuning run"):
        finetune(tiny(bc_policy, tmp_path / "straight", mode="rlpd"))
    with pytest.raises(ValueError, match="differ from the run"):
        finetune(tiny(bc_policy, tmp_path / "straight", mode="rlpd", lr=1e-3, resume=True))


def test_refuses_a_task_other_than_the_policys(bc_policy, tmp_path):
    with pytest.raises(ValueError, match="does not match the policy's task"):
        finetune(tiny(bc_policy, tmp_path / "x", task="stack"))


def test_n_step_targets_and_terminal_episodes():
    returns, discounts, offsets = n_step_targets(np.array([0.0, 0.0, 1.0]), terminated=True, n_step=2, gamma=0.5)
    np.testing.assert_allclose(returns, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(discounts, [0.25, 0.0, 0.0])
    np.testing.assert_array_equal(offsets, [2, 2, 1])
    _, discounts, _ = n_step_targets(np.zeros(3), terminated=False, n_step=2, gamma=0.5)
    np.testing.assert_allclose(discounts, [0.25, 0.25, 0.5])  # time limits bootstrap


def test_replay_ring_drops_whole_old_episodes():
    buffer = ReplayBuffer({"x": ((1,), torch.float32)}, action_size=1, capacity=10, n_step=1)
    for episode in range(4):  # 4 frames each: the third episode evicts the first
        frames = {"x": np.full((4, 1), episode, np.float32) + np.arange(4)[:, None] / 10}
        buffer.add_episode(frames, np.zeros((3, 1)), np.ones(3), terminated=False)
    assert len(buffer) == 6 and len(buffer.episodes) == 2
    batch = buffer.sample(256, torch.Generator().manual_seed(0))
    assert set(np.floor(batch["obs"]["x"].numpy().ravel()).tolist()) == {2.0, 3.0}
    np.testing.assert_allclose(batch["next_obs"]["x"] - batch["obs"]["x"], 0.1, atol=1e-6)  # same episode, next frame


def test_bc_term_copies_no_recorded_perturbation(bc_policy, tmp_path):
    # The demo buffer keeps a demonstration's perturbed steps as transitions but marks them not to imitate.
    buffer = ReplayBuffer({"x": ((1,), torch.float32)}, action_size=1, capacity=20, n_step=1)
    frames = {"x": np.arange(5, dtype=np.float32)[:, None]}
    buffer.add_episode(frames, np.zeros((4, 1)), np.zeros(4), terminated=False, imitate=np.array([1, 0, 0, 1], bool))
    batch = buffer.sample(256, torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(batch["imitate"].numpy(), np.isin(batch["obs"]["x"].numpy().ravel(), [0.0, 3.0]))
    assert len(buffer) == 4  # every transition is still sampled
    restored = ReplayBuffer({"x": ((1,), torch.float32)}, action_size=1, capacity=20, n_step=1)
    restored.restore(buffer.state_tensors("demo"), "demo", buffer.state_json())
    assert torch.equal(restored.imitate, buffer.imitate)

    # The actor's BC term averages over the demonstration rows marked to imitate, and only those.
    out = finetune(tiny(bc_policy, tmp_path / "ibrl", mode="ibrl", steps=20, until=20, eval_every=1000))
    agent = load_policy(out, "best")
    agent.config.bc_weight = 1.0
    env = make_training_env("lift", None, read_config(out)["env"], "sparse")
    observation, _ = env.reset(seed=2)
    agent.reset()
    frame = {
        key: torch.as_tensor(value)[None].repeat(3, *[1] * np.ndim(value))
        for key, value in agent.perceive(observation).items()
    }
    targets = torch.tensor([[0.5] * 5, [-0.9] * 5, [0.9] * 5])
    rows = {"obs": frame, "action": targets, "is_demo": torch.tensor([True, True, False])}
    with torch.no_grad():
        _, marked = agent.actor_loss(rows | {"imitate": torch.tensor([True, False, True])}, frame["phi"])
        _, first = agent.actor_loss(
            rows | {"imitate": torch.tensor([True, True, True])} | {"is_demo": torch.tensor([True, False, False])},
            frame["phi"],
        )
    assert marked["bc_loss"] == pytest.approx(first["bc_loss"])  # row 1 (perturbed) and row 2 (online) left out
    env.close()


def test_agent_evaluates_on_true_positions_through_its_bc_base(bc_policy, relative_bc, tmp_path):
    out = finetune(tiny(relative_bc, tmp_path / "ibrl", steps=20, until=20, eval_every=1000))
    agent, bc = load_policy(out, "best"), load_policy(relative_bc, "best")
    for policy in (agent, bc):
        act_on_true_positions(policy)
    env = make_training_env("lift", None, read_config(out)["env"], "sparse")
    observation, _ = env.reset(seed=5)
    agent.reset()
    bc.reset()
    # The agent's features are its base's, built from the true positions in place of the estimates.
    np.testing.assert_array_equal(agent.perceive(observation)["phi"], bc.step(observation)[1][0].numpy())
    bc.true_positions = False
    bc.reset()
    assert not np.array_equal(agent.perceive(observation)["phi"], bc.step(observation)[1][0].numpy())
    env.close()
    metrics = evaluate(EvalConfig(out, episodes=1, positions="true"))
    assert metrics["positions"] == "true" and (out / "eval" / "best-seed0-1-true-positions" / "metrics.json").is_file()
    # An agent on a bc policy that estimates nothing is refused before any episode runs.
    plain = finetune(tiny(bc_policy, tmp_path / "plain", steps=20, until=20, eval_every=1000))
    with pytest.raises(ValueError, match="'ibrl' on a bc policy with trunk input 'features', which has none"):
        evaluate(EvalConfig(plain, episodes=1, positions="true"))


def test_refitted_estimator_fits_the_visited_frames_and_rebuilds_their_features(bc_policy, relative_bc, tmp_path):
    straight = finetune(tiny(relative_bc, tmp_path / "straight", refit_positions=30))
    rows = log_rows(straight)
    refits = [row for row in rows if "position_error_after_mm" in row]
    assert [row["env_steps"] for row in refits] == [row["env_steps"] for row in rows[1:]]  # before every check
    assert refits[0]["position_error_after_mm"] < refits[0]["position_error_before_mm"]
    agent, bc = load_policy(straight, "model"), load_policy(relative_bc, "best")
    weights = agent.state_dict()
    assert any(not torch.equal(weights[f"estimator.{k}"], v) for k, v in bc.aux_head.state_dict().items())
    assert all(torch.equal(weights[f"base.{key}"], value) for key, value in bc.state_dict().items())

    env = make_training_env("lift", None, read_config(straight)["env"], "sparse")
    observation, _ = env.reset(seed=6)
    agent.reset()
    frame = agent.perceive(observation)
    # What the replay's features are rebuilt from gives back the features the agent acted on.
    rebuilt = agent.features_from_estimator(
        torch.as_tensor(frame["estimator_input"])[None], torch.as_tensor(frame["history_state"])[None]
    )
    np.testing.assert_allclose(rebuilt[0].detach().numpy(), frame["phi"], rtol=1e-6, atol=1e-6)
    # Before any refit the agent's estimator is its base's: the same features as the BC policy's.
    fresh = finetune(tiny(relative_bc, tmp_path / "fresh", refit_positions=30, steps=20, until=20, eval_every=1000))
    unrefitted = load_policy(fresh, "best")
    unrefitted.reset()
    bc.reset()
    np.testing.assert_allclose(unrefitted.perceive(observation)["phi"], bc.step(observation)[1][0].numpy(), atol=1e-6)
    env.close()

    finetune(tiny(relative_bc, tmp_path / "resumed", refit_positions=30, until=80))
    resumed = finetune(tiny(relative_bc, tmp_path / "resumed", refit_positions=30, resume=True))
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]  # noqa: E731
    assert strip(log_rows(straight)) == strip(log_rows(resumed))
    with pytest.raises(ValueError, match="estimates object positions frame by frame"):
        finetune(tiny(bc_policy, tmp_path / "plain", refit_positions=30))
