"""Behaviour cloning from pixels and proprioception (``--policy bc``).

One visual encoder per camera (``small``: a strided conv stack with spatial softmax,
the CPU preset; ``resnet18``: a GroupNorm ResNet-18 trained from scratch, the GPU
preset), random-shift augmentation, the normalised proprioceptive state, an MLP
trunk, and one of three heads over a chunk of future actions:

- ``deterministic``: mean-squared error;
- ``gaussian``: a diagonal Gaussian, negative log-likelihood;
- ``gmm``: a mixture of Gaussians, for multimodal human demonstrations.

Shapes: observations (B, history, ...) -> actions (B, chunk, A). At run time the
policy predicts a chunk every step and executes the temporal ensemble of every
prediction made for the current step (ACT's recipe), the first action of the
newest chunk, or each chunk open loop (``execute``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from robolearn.envs.spec import FeatureSpec
from robolearn.policies.base import Policy, register_policy
from robolearn.policies.layers import ENCODERS, SCALE_FLOOR, Normalizer, images_to_float, mlp, shift_images

PER_FRAME_INPUTS = ("positions", "relative")
"""Trunk inputs made of object positions estimated frame by frame (what random scenes and
``robolearn eval --positions true`` act on)."""


@dataclass
class BCConfig:
    """Behaviour cloning settings."""

    encoder: Literal["small", "resnet18"] = "small"
    """Visual encoder per camera: small (CPU preset) or resnet18 (GPU preset)."""
    keypoints: int = 32
    """Spatial-softmax keypoints per camera."""
    channels: int = 32
    """Channels of the small encoder's convolutions."""
    strides: tuple[int, int, int] = (2, 2, 1)
    """Strides of the small encoder's three convolutions: (2, 1, 1) finds keypoints on a twice finer
    feature map (more precise positions, about three times the encoder compute)."""
    cameras: tuple[str, ...] = ()
    """Cameras the policy sees; empty means every camera in the dataset."""
    use_state: bool = True
    """Feed the proprioceptive state as well as pixels."""
    state_features: tuple[str, ...] | None = None
    """Entries of the proprioceptive state the policy sees, by their names in the data's state layout
    (e.g. gripper_position gripper_opening); empty means all; None (the default): gripper_opening alone with
    the relative trunk input, all otherwise. Entries that differ between demonstrations without bearing on
    the task (joint angles) let a policy trained on few demonstrations tell them apart instead of reading
    the scene (benchmarks/results/bc_probe_push.md). The hand's orientation bears on push: without it the
    trunk cannot turn the hand square to the push, and the fingers slide off the cube
    (benchmarks/results/bc_per_task.md)."""
    hidden: int = 256
    """Width of the MLP trunk."""
    layers: int = 3
    """Hidden layers of the MLP trunk."""
    dropout: float = 0.0
    """Dropout after each hidden layer of the trunk (regularises small datasets)."""
    head: Literal["deterministic", "gaussian", "gmm"] = "deterministic"
    """Action head: mean-squared error, a Gaussian, or a Gaussian mixture."""
    modes: int = 5
    """Mixture components of the gmm head."""
    history: int = 2
    """Observations the policy sees: the current one and history - 1 before it."""
    chunk: int = 4
    """Future actions predicted per step (4 took push from 63% to 74% against 8 and left lift and stack
    where they were: benchmarks/results/bc_chunk4_push.md, bc_c4_unshift.md)."""
    execute: Literal["ensemble", "first", "chunk"] = "ensemble"
    """How predicted chunks become actions: a temporal ensemble of every prediction for the current
    step (ACT), the first action of the newest chunk (receding horizon), or whole chunks open loop."""
    ensemble_decay: float = 0.1
    """Ensemble weights exp(-decay * i), i = 0 for the oldest prediction: above 0 favours older ones."""
    shift: int = 4
    """Random-shift augmentation in pixels (0 turns it off)."""
    unshift: bool = True
    """Take each image's random shift back out of its keypoints: the augmentation still jitters the pixels
    (how they fall on the strided feature map, what enters at the edges), but the keypoints keep saying
    where things are in the image, which for a fixed camera is where they are on the table."""
    aux_weight: float | None = None
    """Weight of an auxiliary loss predicting the objects' positions (from the recorded privileged state)
    out of the encoded observations, so the encoders learn where the objects are (0 turns it off; None,
    the default: 1 with the positions or relative trunk input, 0 with features)."""
    trunk_positions: Literal["recorded", "estimated"] = "recorded"
    """With trunk input positions or relative: the object positions the trunk learns from. ``recorded``:
    the demonstrations' true positions (the estimator's targets), so the trunk learns the actions from clean
    inputs and acts on the estimates; ``estimated``: the estimator's own output, noise included, which
    teaches the trunk to answer small offsets weakly (push: 83.7% over 3 seeds, 82.0% on true positions;
    recorded: 86.2% over 6 seeds, 91.5% on true positions; benchmarks/results/bc_push_estimated_trunk.md,
    bc_true_positions.md, bc_push_seeds3to5.md)."""
    position_frame: Literal["world", "gripper"] = "world"
    """Where the position estimator measures the objects from: ``world`` (the default) positions, or
    ``gripper``: each object's horizontal offset from the gripper, which the wrist camera shows directly
    and the relative trunk input is made of (heights stay in the world frame: they hardly vary and the
    trunk reads their millimetres). Neither is ahead beyond a seed's spread: stack 74.3% against 69.7%,
    push 85.0% against 88.3% over 3 seeds, and no smaller error on push's held-out frames
    (benchmarks/results/bc_gripper_frame.md, position_error_gripper_frame.md)."""
    static_positions: tuple[str, ...] | None = None
    """Object positions (privileged-state entries) that never move within an episode, such as a goal
    marker: at run time the policy holds the mean of their estimates over the episode's first
    ``static_frames`` frames (before the arm can hide them) instead of re-estimating them every frame.
    None: ``robolearn train`` finds them in the data (entries constant through every episode)."""
    scale_floor: float = SCALE_FLOOR
    """Smallest standard deviation (in each quantity's units: metres for positions and the opening) by which
    the trunk's relative positions, its state entries and the estimator's position targets are normalised.
    A quantity the demonstrations hardly vary (push: the cube's and goal's heights, the closed fingers'
    opening, the hand's tilt) is otherwise scaled up until its noise is as loud as what matters. 0.01 lets
    the trunk see the hand's orientation on push (``--bc.state-features gripper_opening gripper_quaternion``:
    95.0% against 88.3%; benchmarks/results/bc_per_task.md)."""
    static_frames: int = 5
    """Frames whose estimates of a static position are averaged (0: estimate every frame anew)."""
    trunk_input: Literal["auto", "features", "positions", "relative"] = "auto"
    """What the trunk sees of each frame besides the state. ``auto`` (the default): relative where the
    data can teach it (object positions in the privileged state and the gripper's position in the state,
    as every robolearn task records) and ``aux_weight`` is not 0, features otherwise (e.g. imported
    robomimic data without object positions); the policy's saved config holds the choice. ``features``:
    the encoders' features; ``positions``: only the object positions predicted from them (learnt by the
    auxiliary loss alone; needs aux_weight > 0); or ``relative``: where each predicted object is from the
    gripper, where the objects are from each other, and the gripper's height. Positions leave the trunk
    nothing incidental (a cube's spin, the arm's pose) to tell demonstrations apart by, which from few
    demonstrations it otherwise uses to memorise them instead of reading the scene; relative ones also
    make what it learns in one place hold in another (benchmarks/results/bc_probe_push.md). With
    ``relative`` the position estimator sees the whole state and ``state_features`` picks what the trunk
    sees besides (e.g. gripper_opening). Train the estimator on random scenes too: ``robolearn train
    --scenes``."""

    def __post_init__(self) -> None:
        if self.history < 1 or self.chunk < 1:
            raise ValueError(f"history and chunk must be at least 1, found {self.history} and {self.chunk}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--bc.dropout must be in [0, 1), found {self.dropout}")
        if self.trunk_input in PER_FRAME_INPUTS and self.aux_weight is not None and self.aux_weight <= 0:
            raise ValueError(
                f"--bc.trunk-input {self.trunk_input} learns the positions from the auxiliary loss; "
                "set --bc.aux-weight > 0"
            )
        if self.trunk_input == "relative" and not self.use_state:
            raise ValueError(
                "--bc.trunk-input relative measures from the gripper's position in the state; keep use_state"
            )
        if self.position_frame == "gripper" and not self.use_state:
            raise ValueError(
                "--bc.position-frame gripper measures from the gripper's position in the state; keep use_state"
            )
        if not self.scale_floor > 0:
            raise ValueError(
                f"--bc.scale-floor must be above 0 (in the quantities' units), found {self.scale_floor}; try 0.01"
            )
        if self.static_frames < 0:
            raise ValueError(f"--bc.static-frames must be at least 0, found {self.static_frames}")
        if self.head == "gmm" and self.modes < 2:
            raise ValueError(f"the gmm head needs at least 2 modes, found {self.modes}; or use --head gaussian")


@register_policy("bc")
class BCPolicy(Policy):
    config_class = BCConfig

    def __init__(self, features: FeatureSpec, config: BCConfig) -> None:
        super().__init__(features, resolved_config(config, features))
        config = self.config
        available = features.cameras
        self.cameras = tuple(config.cameras) or available
        missing = [camera for camera in self.cameras if camera not in available]
        if missing:
            raise ValueError(f"cameras {missing} are not in the data; it has {list(available) or 'no cameras'}")
        if not self.cameras and not config.use_state:
            raise ValueError("the policy sees nothing: the data has no cameras and use_state is off")
        encoder = ENCODERS[config.encoder]
        small = {"channels": config.channels, "strides": tuple(config.strides)}
        kwargs = {"keypoints": config.keypoints} | (small if config.encoder == "small" else {})
        self.encoders = nn.ModuleDict({camera: encoder(**kwargs) for camera in self.cameras})
        indices = torch.tensor(_state_indices(features, config), dtype=torch.long)
        self.register_buffer("state_indices", indices, persistent=False)  # derived from the config
        state_size = len(self.state_indices) if config.use_state else 0
        relative = config.trunk_input == "relative"
        # With relative inputs the position estimator sees the whole state, the trunk the chosen entries.
        full_state = features.observations["state"].shape[0] if relative else state_size
        self.state_normalizer = Normalizer(max(full_state, 1))
        self.action_size = features.action.shape[0]
        self.low = features.action.low if features.action.low is not None else -math.inf
        self.high = features.action.high if features.action.high is not None else math.inf
        visual_size = sum(e.output_size for e in self.encoders.values())
        privileged = features.observations.get("privileged")
        self.object_positions = privileged.indices("position") if privileged is not None else []
        self.static_indices = _static_indices(privileged, self.object_positions, config.static_positions or ())
        if config.aux_weight > 0 and not self.object_positions:
            raise ValueError("--bc.aux-weight needs object positions in the data's privileged state; it has none")
        positions = config.trunk_input == "positions"
        if relative or config.position_frame == "gripper":
            self.gripper_indices = _gripper_indices(features, config)
            if len(self.object_positions) % 3:
                raise ValueError(f"object positions must be 3-vectors; the privileged state has {privileged.layout}")
        if relative:
            size = relations(torch.zeros(len(self.object_positions)), torch.zeros(3)).shape[-1]
            self.relative_normalizer = Normalizer(size)
        per_frame = {"features": visual_size, "positions": len(self.object_positions)}
        if relative:
            per_frame["relative"] = self.relative_normalizer.mean.shape[0]
        per_step = per_frame[config.trunk_input] + state_size
        outputs = config.chunk * self.action_size
        head_size = {"deterministic": outputs, "gaussian": 2 * outputs, "gmm": config.modes * (1 + 2 * outputs)}
        self.trunk = mlp(
            config.history * per_step, config.hidden, config.layers, head_size[config.head], config.dropout
        )
        if positions or relative:  # per frame: that frame's visual features and state -> its object positions
            self.aux_head = mlp(visual_size + full_state, config.hidden, 1, len(self.object_positions))
        elif config.aux_weight > 0:
            self.aux_head = nn.Linear(config.history * per_step, len(self.object_positions))
        if config.aux_weight > 0:
            self.position_normalizer = Normalizer(len(self.object_positions))
        self.true_positions = False
        """Act on the simulator's object positions (the observation's privileged state) instead of the
        per-frame estimates: a diagnostic of how much failure is perception (``robolearn eval --positions true``)."""
        self.reset()

    @property
    def history(self) -> int:
        return self.config.history

    @property
    def chunk(self) -> int:
        return self.config.chunk

    @property
    def observation_keys(self) -> tuple[str, ...]:
        keys = tuple(f"rgb/{camera}" for camera in self.cameras)
        return ("state", *keys) if self.config.use_state else keys

    @property
    def training_keys(self) -> tuple[str, ...]:
        return (*self.observation_keys, "privileged") if self.config.aux_weight > 0 else self.observation_keys

    @property
    def per_frame_positions(self) -> bool:
        """Whether object positions are predicted frame by frame (what random scenes can train)."""
        return self.config.trunk_input in PER_FRAME_INPUTS

    def fit_normalization(self, batch: dict[str, torch.Tensor]) -> None:
        floor = self.config.scale_floor
        if self.config.use_state:
            state = batch["obs/state"].float()
            relative = self.config.trunk_input == "relative"
            self.state_normalizer.fit((state if relative else self._state(state)).flatten(0, -2))
            seen = self.state_indices if relative else slice(None)  # the entries the trunk sees
            self.state_normalizer.std[seen] = self.state_normalizer.std[seen].clamp_min(floor)
        if self.config.aux_weight > 0:
            positions = batch["obs/privileged"][..., self.object_positions].float()
            self.position_normalizer.fit(self._in_frame(positions, batch["obs/state"]).flatten(0, -2), floor)
            if self.config.trunk_input == "relative":
                gripper = batch["obs/state"][..., self.gripper_indices].float()
                self.relative_normalizer.fit(relations(positions, gripper).flatten(0, -2), floor)

    # ------------------------------------------------------------- network
    def encode(self, observations: dict[str, torch.Tensor], augment: bool) -> torch.Tensor:
        """Observations (B, history, ...) to one feature vector per sample (B, F)."""
        return self._encode(observations, augment)[0]

    def _encode(self, observations: dict[str, torch.Tensor], augment: bool, truth: torch.Tensor | None = None):
        """``encode``, also returning the predicted object positions (B, history, P) with ``trunk_input``
        positions or relative (normalised; None otherwise). ``truth`` (B, history, P; metres) takes the place
        of the predicted positions in what the trunk sees."""
        parts, chosen, positions = self._perceive(observations, augment)
        return self._trunk_features(observations, parts, chosen, positions, truth), positions

    def _perceive(self, observations: dict[str, torch.Tensor], augment: bool):
        """Per-frame encoder features and normalised state (parts), the state entries the trunk sees
        (chosen) and, with trunk input positions or relative, the predicted object positions (normalised)."""
        parts = []
        for camera, encoder in self.encoders.items():
            images = observations[f"rgb/{camera}"]
            batch, history = images.shape[:2]
            pixels, moved = images_to_float(images.flatten(0, 1)), None
            if augment and self.config.shift:
                pixels, moved = shift_images(pixels, self.config.shift)
            parts.append(encoder(pixels, moved if self.config.unshift else None).view(batch, history, -1))
        seen, chosen = self._state_parts(observations)
        parts += seen
        positions = self.aux_head(torch.cat(parts, dim=-1)) if self.per_frame_positions else None
        return parts, chosen, positions

    def _trunk_features(self, observations, parts, chosen, positions, truth) -> torch.Tensor:
        """What the trunk sees (B, history * per-step size), from ``_perceive``'s output; ``truth``
        (metres) in place of the predicted positions if given."""
        trunk_input = self.config.trunk_input
        if trunk_input == "features":
            return torch.cat(parts, dim=-1).flatten(1)
        # Detached: the imitation loss cannot make the "positions" carry anything but positions.
        if trunk_input == "positions":
            shown = positions.detach() if truth is None else self._targets(truth, observations["state"])
            return torch.cat([shown.to(positions.dtype), *chosen], dim=-1).flatten(1)
        metres = self._metres(positions.detach(), observations["state"]) if truth is None else truth.float()
        gripper = observations["state"][..., self.gripper_indices].float()
        related = self.relative_normalizer(relations(metres, gripper))
        return torch.cat([related.to(positions.dtype), *chosen], dim=-1).flatten(1)

    @torch.no_grad()
    def estimated_positions(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """The object positions (m, world frame) estimated from each frame (B, history, P), in the order of
        ``object_positions``; for ``trunk_input`` positions or relative."""
        if not self.per_frame_positions:
            raise ValueError("this policy estimates no per-frame positions; train it with --bc.trunk-input relative")
        return self._metres(self._perceive(observations, augment=False)[2], observations["state"])

    def _metres(self, estimated: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """The estimator's output (normalised, in ``position_frame``) as world positions in metres (``state``
        is read in the gripper frame only)."""
        metres = self.position_normalizer.inverse(estimated.float())
        return metres + self._origin(state) if self.config.position_frame == "gripper" else metres

    def _targets(self, positions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """World object positions (metres) as the estimator's normalised targets."""
        return self.position_normalizer(self._in_frame(positions.float(), state))

    def _in_frame(self, positions: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return positions - self._origin(state) if self.config.position_frame == "gripper" else positions

    def _origin(self, state: torch.Tensor) -> torch.Tensor:
        """Where the gripper frame's positions are measured from, per object entry (..., P): the gripper's
        x and y, height 0."""
        gripper = state[..., self.gripper_indices].float()
        horizontal = torch.cat([gripper[..., :2], torch.zeros_like(gripper[..., 2:])], dim=-1)
        return horizontal.repeat(*([1] * (horizontal.dim() - 1)), len(self.object_positions) // 3)

    def _state(self, state: torch.Tensor) -> torch.Tensor:
        return state.float().index_select(-1, self.state_indices)

    def _split(self, output: torch.Tensor):
        batch, chunk, size = output.shape[0], self.config.chunk, self.action_size
        if self.config.head == "deterministic":
            return output.view(batch, chunk, size)
        if self.config.head == "gaussian":
            mean, log_std = output.view(batch, 2, chunk, size).unbind(1)
            return mean, log_std.clamp(-5.0, 2.0)
        modes = self.config.modes
        logits = output[:, :modes]
        mean, log_std = output[:, modes:].view(batch, modes, 2, chunk, size).unbind(2)
        return logits, mean, log_std.clamp(-5.0, 2.0)

    def predict(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:
        """Point prediction of the next ``chunk`` actions (B, chunk, A)."""
        return self.predict_from_features(self.encode(observations, augment=False))

    def predict_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``predict`` from the output of ``encode`` (B, F)."""
        heads = self._split(self.trunk(features))
        if self.config.head == "deterministic":
            return heads
        if self.config.head == "gaussian":
            return heads[0]
        logits, mean, _ = heads
        best = logits.argmax(-1)
        return mean[torch.arange(mean.shape[0], device=mean.device), best]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        observations = {key[4:]: value for key, value in batch.items() if key.startswith("obs/")}
        target, mask = batch["actions"].float(), batch["action_mask"].float()
        recorded = None
        if self.per_frame_positions and self.config.trunk_positions == "recorded":
            recorded = observations["privileged"][..., self.object_positions].float()
        encoded, predicted = self._encode(observations, self.training, recorded)
        heads = self._split(self.trunk(encoded))
        weight = mask.sum().clamp_min(1.0)
        loss, metrics = self._imitation_loss(heads, target, mask, weight)
        if self.config.aux_weight > 0:
            positions = self._targets(observations["privileged"][..., self.object_positions], observations["state"])
            if predicted is None:
                predicted, positions = self.aux_head(encoded), positions[:, -1]
            aux = (predicted.float() - positions).pow(2).mean()
            loss = loss + self.config.aux_weight * aux
            metrics |= {"aux": aux.item()}
            scenes = {key[7:]: value for key, value in batch.items() if key.startswith("scenes/")}
            if scenes:  # random scenes (robolearn.data.scenes) train the position estimator alone
                predicted = self._perceive(scenes, augment=self.training)[2]
                truth = self._targets(scenes["privileged"][..., self.object_positions], scenes["state"])
                scene_aux = (predicted.float() - truth).pow(2).mean()
                loss = loss + self.config.aux_weight * scene_aux
                metrics["scene_aux"] = scene_aux.item()
            metrics["loss"] = loss.item()
        return loss, metrics

    def _imitation_loss(self, heads, target: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor):
        if self.config.head == "deterministic":
            error = (heads.float() - target).pow(2).mean(-1)
            loss = (error * mask).sum() / weight
            return loss, {"loss": loss.item(), "mse": loss.item()}
        if self.config.head == "gaussian":
            mean, log_std = (h.float() for h in heads)
            log_prob = _normal_log_prob(target, mean, log_std).sum(-1)
            loss = -(log_prob * mask).sum() / weight
            mse = (((mean - target).pow(2).mean(-1)) * mask).sum() / weight
            return loss, {"loss": loss.item(), "mse": mse.item()}
        logits, mean, log_std = (h.float() for h in heads)
        component = (_normal_log_prob(target.unsqueeze(1), mean, log_std).sum(-1) * mask.unsqueeze(1)).sum(-1)
        log_prob = torch.logsumexp(torch.log_softmax(logits, -1) + component, dim=-1)
        loss = -log_prob.mean() / self.config.chunk
        best = mean[torch.arange(mean.shape[0], device=mean.device), logits.argmax(-1)]
        mse = (((best - target).pow(2).mean(-1)) * mask).sum() / weight
        return loss, {"loss": loss.item(), "mse": mse.item()}

    # ------------------------------------------------------------- acting
    def reset(self) -> None:
        self._history: deque = deque(maxlen=self.config.history)
        self._encoded: deque = deque(maxlen=self.config.history)  # per-frame features of _history
        self._parts: deque = deque(maxlen=self.config.history)  # per-frame _perceive parts of _history
        self._chunks: deque = deque(maxlen=self.config.chunk)  # (predicted chunk, age)
        self._open_loop: list[np.ndarray] = []
        self._static_estimates: list[torch.Tensor] = []  # the first frames' estimates of the static positions
        self._static_held: torch.Tensor | None = None  # their mean, once all static_frames are in

    def act(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return self.step(observation)[0]

    @torch.no_grad()
    def step(self, observation: dict[str, np.ndarray]) -> tuple[np.ndarray, torch.Tensor, dict[str, torch.Tensor]]:
        """``act``, also returning the encoder features (1, F) and the stacked observations (1, history, ...).

        RL fine-tuning builds on these: the features are its frozen representation.
        """
        device = self.device
        step = {key: torch.as_tensor(np.asarray(observation[key]), device=device) for key in self.observation_keys}
        frame = {key: value[None, None] for key, value in step.items()}
        # Frames are encoded independently, so each is encoded once and its features kept for the history.
        parts, chosen, positions = self._perceive(frame, augment=False)
        encoded = self._trunk_features(frame, parts, chosen, positions, self._positions_now(observation, positions))
        if not self._history:
            self._history.extend([step] * self.config.history)
            self._encoded.extend([encoded] * self.config.history)
            self._parts.extend([parts] * self.config.history)
        self._history.append(step)
        self._encoded.append(encoded)
        self._parts.append(parts)
        stacked = {key: torch.stack([h[key] for h in self._history]).unsqueeze(0) for key in self.observation_keys}
        features = torch.cat(list(self._encoded), dim=-1)
        if self.config.execute == "chunk" and self._open_loop:
            return self._open_loop.pop(0), features, stacked
        prediction = self.predict_from_features(features)[0].float().cpu().numpy()
        chunk = np.clip(prediction, self.low, self.high).astype(np.float32)
        if self.config.execute == "first":
            return chunk[0], features, stacked
        if self.config.execute == "chunk":
            self._open_loop = list(chunk[1:])
            return chunk[0], features, stacked
        self._chunks.appendleft(chunk)
        return temporal_ensemble(self._chunks, self.config.ensemble_decay), features, stacked

    def recent_estimator_inputs(self) -> torch.Tensor:
        """What the position estimator (``aux_head``) read in each frame of the history since ``reset``
        (1, history, D): that frame's encoder features and normalised state."""
        return torch.cat([torch.cat(parts, dim=-1) for parts in self._parts], dim=1)

    def features_from_positions(self, state: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The trunk's input (B, history * per-step size) from the frames' states (B, history, S) and
        normalised position estimates (B, history, P): ``encode``'s output when the estimates are those given
        (with trunk input positions or relative)."""
        if not self.per_frame_positions:
            raise ValueError("this policy estimates no per-frame positions; train it with --bc.trunk-input relative")
        observations = {"state": state}
        return self._trunk_features(observations, None, self._state_parts(observations)[1], positions, None)

    def _state_parts(self, observations: dict[str, torch.Tensor]) -> tuple[list, list]:
        """The normalised state as the estimator sees it (a list of none or one tensor) and the entries of it
        the trunk sees (likewise)."""
        if not self.config.use_state:
            return [], []
        if self.config.trunk_input == "relative":
            state = self.state_normalizer(observations["state"].float())
            return [state], [state.index_select(-1, self.state_indices)]
        state = self.state_normalizer(self._state(observations["state"]))
        return [state], [state]

    def _positions_now(self, observation: dict[str, np.ndarray], predicted: torch.Tensor | None):
        """The object positions (metres, (1, 1, P)) the trunk sees at this step, or None for the plain
        per-frame estimate: the true ones (``true_positions``), or the estimate with the static positions
        held at their mean over the episode's first frames."""
        if self.true_positions:
            privileged = torch.as_tensor(np.asarray(observation["privileged"]), device=self.device)
            return privileged[self.object_positions][None, None]
        if predicted is None or not self.static_indices or not self.config.static_frames:
            return None
        state = None  # only the gripper frame measures from the state; the world frame skips the copy
        if self.config.position_frame == "gripper":
            state = torch.as_tensor(np.asarray(observation["state"]), device=self.device)[None, None]
        metres = self._metres(predicted, state)
        if self._static_held is None:
            self._static_estimates.append(metres[..., self.static_indices])
            held = torch.stack(self._static_estimates).mean(0)
            if len(self._static_estimates) == self.config.static_frames:
                self._static_held = held
        else:
            held = self._static_held
        metres[..., self.static_indices] = held
        return metres


def temporal_ensemble(chunks, decay: float) -> np.ndarray:
    """ACT's temporal ensemble of predicted chunks, newest first: ``chunks[i]`` was predicted i steps ago,
    so its entry for now is index i; weights exp(-decay * k) with k = 0 for the oldest prediction."""
    predictions = np.stack([chunk[i] for i, chunk in enumerate(chunks)])
    weights = np.exp(-decay * np.arange(len(predictions))[::-1])
    return ((weights[:, None] * predictions).sum(0) / weights.sum()).astype(np.float32)


def resolved_config(config: BCConfig, features: FeatureSpec) -> BCConfig:
    """``config`` with its data-dependent defaults (``auto`` and None) decided from ``features``: the
    recipe of ``benchmarks/bc.py`` (relative trunk input, auxiliary weight 1, the gripper's opening as the
    state) where the data can teach it, encoder features and the whole state where it cannot."""
    privileged = features.observations.get("privileged")
    state_names = _state_names(features)
    trunk_input = config.trunk_input
    if trunk_input == "auto":
        positions = privileged is not None and bool(privileged.indices("position"))
        # An explicit --bc.aux-weight 0 asks for no position learning, which the relative input needs.
        learns_positions = config.aux_weight is None or config.aux_weight > 0
        usable = positions and learns_positions and config.use_state and "gripper_position" in state_names
        trunk_input = "relative" if usable else "features"
    aux_weight = config.aux_weight
    if aux_weight is None:
        aux_weight = 0.0 if trunk_input == "features" else 1.0
    state_features = config.state_features
    if state_features is None:
        state_features = ("gripper_opening",) if trunk_input == "relative" and "gripper_opening" in state_names else ()
    return replace(config, trunk_input=trunk_input, aux_weight=aux_weight, state_features=tuple(state_features))


def _state_names(features: FeatureSpec) -> list[str]:
    """Names of the entries in the data's state layout (none without a state)."""
    state = features.observations.get("state")
    return [name for name, _, _ in state.layout] if state is not None else []


def _state_indices(features: FeatureSpec, config: BCConfig) -> list[int]:
    """Indices into the state vector of the entries ``config.state_features`` names (all if none)."""
    state = features.observations.get("state")
    size = state.shape[0] if state is not None else 0
    if not config.state_features:
        return list(range(size))
    if not config.use_state:
        raise ValueError("--bc.state-features selects state entries, but --bc.use-state is off")
    layout = _state_names(features)
    unknown = [name for name in config.state_features if name not in layout]
    if unknown:
        raise ValueError(
            f"--bc.state-features {unknown} are not in the data's state layout; it has {layout or 'no named entries'}"
        )
    return state.entry_indices(config.state_features)


def _static_indices(privileged, object_positions: list[int], names: tuple[str, ...]) -> list[int]:
    """Where the named static position entries sit in the ``object_positions`` vector."""
    if not names:
        return []
    known = privileged.names("position") if privileged else []
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"--bc.static-positions {unknown} are not object positions in the data's privileged state; "
            f"it has {known or 'none'}"
        )
    return [object_positions.index(index) for index in privileged.entry_indices(names)]


def _gripper_indices(features: FeatureSpec, config: BCConfig) -> list[int]:
    layout = _state_names(features)
    if "gripper_position" not in layout:
        fix = "--bc.trunk-input features" if config.trunk_input == "relative" else "--bc.position-frame world"
        asked = "--bc.trunk-input relative" if config.trunk_input == "relative" else "--bc.position-frame gripper"
        raise ValueError(
            f"{asked} measures from the gripper; the data's state layout has no gripper_position "
            f"(it has {layout or 'no named entries'}); use {fix}"
        )
    return features.observations["state"].entry_indices(["gripper_position"])


def relations(objects: torch.Tensor, gripper: torch.Tensor) -> torch.Tensor:
    """Object positions (..., 3K) and the gripper's (..., 3), in metres, to what ``relative`` shows the trunk:
    each object minus the gripper, each later object minus each earlier one, and the gripper's height."""
    objects = objects.unflatten(-1, (-1, 3))
    parts = [(objects - gripper.unsqueeze(-2)).flatten(-2)]
    first, second = torch.triu_indices(objects.shape[-2], objects.shape[-2], offset=1, device=objects.device)
    if len(first):
        parts.append((objects[..., second, :] - objects[..., first, :]).flatten(-2))
    return torch.cat([*parts, gripper[..., 2:]], dim=-1)


def _normal_log_prob(value: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((value - mean) / log_std.exp()).pow(2) - log_std - 0.5 * math.log(2 * math.pi)
