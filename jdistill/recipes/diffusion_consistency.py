"""Consistency-family distillation of a diffusion teacher (docs/diffusion_methods.md, `variant` chooses):

    cd          consistency distillation: one teacher DDIM step t_{n+1} -> t_n, EMA target (Song et al. 2023)
    ct          consistency training: no teacher, the same noise at both times (Song et al. 2023)
    tcd         trajectory consistency: map both points to a random s <= t_n (Zheng et al. 2024)
    tdd         target-driven: s from a predefined set of few-step schedules, decoupled guidance (Wang et al. 2024)
    hyper_sd    trajectory-segmented: s = the start of t_{n+1}'s segment, segments 8 -> 4 -> 2 -> 1 (Ren et al. 2024);
                with `reward_weight` > 0 its human-feedback stage follows from `reward_start` (a fraction of the
                steps): + reward_weight * L_HF, the negative log-likelihood of each condition under a reward
                classifier on the student's one-step prediction (`tc.reward_feedback_loss`); the reward model is
                the digits classifier trained with `reward_seed` (not the digits-FD network, seed 0, that scores
                the samples), its weights in `state["reward"]`, held fixed
    image_free  continuous-time consistency on points of the teacher's own ODE from noise, no data (Tang et al. 2025)

The student is f(x, t) = c_skip(t) x + c_out(t) x0_theta(x, t) (`methods.consistency.consistency_function`, x0 form;
boundary f(x, t_min) = x exactly), x0_theta the denoiser's data prediction in the teacher's parameterisation.
Times t_{n+1} > t_n are adjacent points of the teacher schedule's `num_steps`-step grid (EDM: Karras sigmas down to
sigma_min; VP / flow: uniform down to 0). The target network theta- is an EMA of the student with `target_decay`
(`state["target"]`; 0 = the student itself, held fixed); the student's own slow EMA (`state["ema"]`) is what is
sampled. Sampling: `consistency` multistep sampling for cd / ct / image_free, strategic stochastic sampling with
`gamma` for tcd / tdd, deterministic segment-boundary steps for hyper_sd.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jdistill.diffusion import samplers
from jdistill.diffusion.data import to_unit
from jdistill.diffusion.feature_classifier import reward_classifier, reward_seed_problem
from jdistill.diffusion.methods import consistency as cm
from jdistill.diffusion.methods import consistency_continuous as cc
from jdistill.diffusion.methods import consistency_trajectory as tc
from jdistill.diffusion.methods.common import teacher_trajectory
from jdistill.diffusion.schedules import EDM, predict
from jdistill.errors import ConfigError
from jdistill.losses.ssl import ema_update
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation
from jdistill.recipes.diffusion_teacher import IMAGES
from jdistill.recipes.dino import copy_params

VARIANTS = ("cd", "ct", "tcd", "tdd", "hyper_sd", "image_free")


@dataclasses.dataclass(frozen=True)
class DiffusionConsistency(DiffusionDistillation):
    """Consistency distillation / training and its trajectory variants (CD, CT, TCD, TDD, Hyper-SD, image-free)."""

    name: str = "diffusion_consistency"
    variant: str = "cd"
    num_steps: int = 16  # N of the teacher-step grid (Consistency Models use 18 on CIFAR-10; 16 splits 8/4/2/1 ways)
    metric: str = "pseudo_huber"  # l2, l1 or pseudo_huber (iCT)
    target_decay: float = 0.95  # EMA of the target network theta- (LCM: 0.95; 0: theta- = sg(theta))
    teacher_solver: str = "ddim"  # the teacher's ODE step t_{n+1} -> t_n: ddim, or heun (Consistency Models)
    output: str = "x0"  # F of f = c_skip x + c_out F: x0 (data prediction), raw (EDM's raw output), auto (raw for EDM)
    time_scale: float | None = None  # t -> noise level of c_skip / c_out; None: 1 for EDM, 10 otherwise (LCM)
    gamma: float = 0.3  # strategic stochastic sampling (tcd / tdd); 0 = deterministic
    tdd_step_counts: tuple[int, ...] = (4, 5, 6, 7, 8)
    tdd_tolerance: float = 0.0  # in units of the finest schedule's step
    tdd_guidance_min: float = 1.0  # teacher CFG scale drawn per example in [min, max] (decoupled guidance)
    tdd_guidance_max: float = 3.0
    tdd_uncond_fraction: float = 0.1  # examples trained unconditional and unguided, so the student can be guided
    hyper_sd_stages: tuple[int, ...] = tc.HYPER_SD_STAGES
    normalize_tangent: bool = True  # image_free: sCM's tangent normalisation
    reward_weight: float = 0.0  # hyper_sd: weight of the human-feedback stage's reward loss (0: no such stage)
    reward_start: float = 0.75  # hyper_sd: the fraction of the steps after which the feedback stage runs
    reward_seed: int = 1  # hyper_sd: the reward classifier is the digits classifier trained with this seed
    total_steps: int | None = None
    steps_per_epoch: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")
        if not 0.0 <= self.target_decay < 1.0:
            raise ValueError(f"target_decay must be in [0, 1), got {self.target_decay}")
        if self.teacher_solver not in cm.TEACHER_SOLVERS:
            solvers = ", ".join(cm.TEACHER_SOLVERS)
            raise ValueError(f"teacher_solver must be one of {solvers}, got {self.teacher_solver!r}")
        if self.output not in (*cm.OUTPUTS, "auto"):
            raise ValueError(f"output must be one of {', '.join(cm.OUTPUTS)}, auto, got {self.output!r}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        stages = self.hyper_sd_stages
        if self.variant == "hyper_sd" and (not stages or any(k < 1 or self.num_steps % k for k in stages)):
            raise ValueError(f"hyper_sd_stages must divide num_steps={self.num_steps}, got {self.hyper_sd_stages}")
        if self.reward_weight < 0 or (self.reward_weight and self.variant != "hyper_sd"):
            raise ValueError(f"reward_weight must be >= 0 and set only for variant hyper_sd, got {self.reward_weight}")
        if not 0.0 <= self.reward_start <= 1.0:
            raise ValueError(f"reward_start must be in [0, 1], got {self.reward_start}")
        if self.reward_weight and (problem := reward_seed_problem(self.reward_seed)):
            raise ValueError(problem)

    def check(self, config):
        super().check(config)
        if self.reward_weight and not (self.conditional and self.data == IMAGES):
            raise ConfigError(
                "distill.options.reward_weight: the reward classifier needs a class-conditional digits teacher"
            )
        if self.output == "raw" and not isinstance(self.schedule, EDM):
            raise ConfigError(
                f"distill.options.output: raw needs an EDM teacher (its raw output is EDM's F); this teacher is "
                f"{self.schedule.name!r}, use x0"
            )

    # ---- the consistency function ----
    def grid_of(self, steps: int) -> np.ndarray:
        """A grid of `steps` intervals from the noise end down to the boundary time t_min (EDM: Karras sigmas down to
        sigma_min; VP and flow: uniform down to 0); the grid of k steps is every (N / k)-th point of the N-step one
        (`samplers.consistency_grid`, also the grid of multistep consistency sampling)."""
        return samplers.consistency_grid(self.schedule, steps)

    @property
    def grid(self) -> np.ndarray:
        """The teacher-step grid of training, `num_steps` intervals."""
        return self.grid_of(self.num_steps)

    @property
    def boundary(self) -> float:
        return float(self.grid[-1])

    def consistency_fn(self, model, labels):
        """f(x, t) of a denoiser module: the boundary-conditioned data prediction (`t` `[batch]` or a scalar).

        `output="x0"`: F is the denoiser's data prediction, c_out divided by sigma_data (LCM's reuse of a pre-trained
        denoiser), times scaled by `time_scale` for VP / flow. `output="raw"` (EDM teachers): Consistency Models' own
        form, F the network's raw output (EDM's F, whose denoiser is c_skip^EDM x + c_out^EDM F): the two sets of
        scalings differ only by sigma -> sigma - sigma_min, so a student copied from the teacher starts as the
        teacher's denoiser at every sigma (Consistency Models initialise CD students from the teacher).
        `output="auto"`: raw for an EDM teacher, x0 otherwise.
        """
        schedule = self.schedule
        sigma_data = getattr(schedule, "sigma_data", cm.SIGMA_DATA)
        if self.output == "raw" or (self.output == "auto" and isinstance(schedule, EDM)):

            def f_raw(x, t):
                t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
                raw = model(x, t, labels)
                return cm.consistency_function(x, raw, t, output="raw", sigma_min=self.boundary, sigma_data=sigma_data)

            return f_raw
        scale = self.time_scale if self.time_scale is not None else (1.0 if isinstance(schedule, EDM) else 10.0)

        def f(x, t):
            t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
            x0 = predict(schedule, model, x, t, labels).x0
            return cm.consistency_function(
                x, x0, t * scale, output="x0", sigma_min=self.boundary * scale, sigma_data=sigma_data
            )

        return f

    # ---- state ----
    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        state = dict(state, target=copy_params(student_params))
        if self.reward_weight:
            state["reward"] = copy_params(nnx.state(reward_classifier(self.reward_seed)))
        return student_params, state

    def after_update(self, recipe_state, params, step):
        state = super().after_update(recipe_state, params, step)
        return dict(state, target=ema_update(state["target"], params, self.target_decay))

    # ---- the objective ----
    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        keys = jax.random.split(rng, 6)
        target_model = nnx.merge(nnx.graphdef(student), jax.lax.stop_gradient(recipe_state["target"]))
        if self.variant == "image_free":
            return self._image_free_loss(student, target_model, recipe_state, batch, keys)
        x0, labels = self.clean_data(batch, keys[0])
        batch_size = x0.shape[0]
        grid = jnp.asarray(self.grid, jnp.float32)
        index = jax.random.randint(keys[1], (batch_size,), 0, grid.shape[0] - 1)
        t_next, t_cur = grid[index], grid[index + 1]
        noise = jax.random.normal(keys[2], x0.shape, x0.dtype)
        scale = None
        if self.variant == "tdd" and labels is not None:
            labels, scale = self._decoupled_guidance(keys[3], labels, student.null_label)
        if self.variant == "ct":
            x_next, x_cur = cm.ct_pair(x0, noise, (t_next, t_cur), self.schedule)
        else:
            teacher_x0 = self.teacher_x0(self.teacher_module(recipe_state), labels, scale)
            x_next, x_cur = cm.cd_pair(
                teacher_x0, x0, noise, (t_next, t_cur), self.schedule, solver=self.teacher_solver
            )
        online = self.consistency_fn(student, labels)
        target = self.consistency_fn(target_model, labels)
        if self.variant in ("cd", "ct"):
            value = cm.consistency_loss(online(x_next, t_next), target(x_cur, t_cur), metric=self.metric)
            return value, {}, ()
        s = self._target_times(keys[4], index, t_cur, batch)
        times = (t_next, t_cur, s)
        x0_hat = online(x_next, t_next)
        value = tc.trajectory_consistency_loss(
            x_next, x0_hat, x_cur, target(x_cur, t_cur), times, self.schedule, metric=self.metric
        )
        if not self.reward_weight:
            return value, {}, ()
        reward = nnx.merge(
            nnx.graphdef(reward_classifier(self.reward_seed)), jax.lax.stop_gradient(recipe_state["reward"])
        )
        feedback = tc.reward_feedback_loss(reward(to_unit(x0_hat)).logits, labels, student.null_label)
        on = self._step(batch) >= self.reward_start * (self.total_steps or 1)
        return value + jnp.where(on, self.reward_weight, 0.0) * feedback, {"reward_loss": feedback}, ()

    def _step(self, batch):
        """The optimizer step of `batch` (from its epoch position)."""
        return jnp.asarray(batch["epoch"], jnp.float32) * (self.steps_per_epoch or 1.0)

    def _target_times(self, key, index, t_cur, batch):
        t_min, t_max = self.boundary, float(self.grid[0])
        if self.variant == "tcd":
            return tc.tcd_target_times(key, t_cur, t_min)
        if self.variant == "tdd":
            schedules = tc.tdd_schedules(self.tdd_step_counts, t_max, t_min)
            finest = (t_max - t_min) / max(self.tdd_step_counts)
            return tc.tdd_target_times(key, t_cur, schedules, self.tdd_tolerance * finest)
        segments = tc.hyper_sd_segments(self._step(batch), self.total_steps or 1, self.hyper_sd_stages)
        return jnp.asarray(self.grid, jnp.float32)[tc.segment_end_index(index, self.num_steps, segments)]

    def _decoupled_guidance(self, key, labels, null_label):
        """TDD's decoupled guidance: a CFG scale per example from [min, max] for the teacher, and a fraction of the
        examples made unconditional and unguided (null label, scale 1) for teacher and student alike."""
        scale_key, drop_key = jax.random.split(key)
        scale = jax.random.uniform(scale_key, labels.shape, minval=self.tdd_guidance_min, maxval=self.tdd_guidance_max)
        drop = jax.random.uniform(drop_key, labels.shape) < self.tdd_uncond_fraction
        return jnp.where(drop, null_label, labels), jnp.where(drop, 1.0, scale)

    def _image_free_loss(self, student, target_model, recipe_state, batch, keys):
        batch_size = batch["inputs"].shape[0]
        shape = (batch_size, *student.sample_shape)
        labels = None
        if self.conditional:
            labels = jax.random.randint(keys[0], (batch_size,), 0, student.num_classes)
        teacher_x0 = self.teacher_x0(self.teacher_module(recipe_state), labels)
        full_grid = self.schedule.timesteps(self.num_steps)
        states = teacher_trajectory(teacher_x0, self.schedule.prior(keys[1], shape), full_grid, self.schedule)
        x, t = cc.trajectory_points(keys[2], states, full_grid)
        velocity = self.schedule.velocity_from_x0(x, t, teacher_x0(x, t))
        value, tangent = cc.consistency_tangent(self.consistency_fn(target_model, labels), x, t, velocity)
        online = self.consistency_fn(student, labels)(x, t)
        loss = cc.continuous_consistency_loss(online, value, tangent, normalize_tangent=self.normalize_tangent)
        return loss, {}, ()

    # ---- sampling ----
    def student_sampler(self, model, nfe: int | None = None):
        nfe = nfe or self.sampling_nfe
        graphdef, params = nnx.split(model)
        schedule, variant, gamma = self.schedule, self.variant, self.gamma
        grid = self.grid_of(nfe)

        @jax.jit
        def run(params, x_T, labels, rng):
            f = self.consistency_fn(nnx.merge(graphdef, params), labels)
            if variant in ("cd", "ct", "image_free"):  # on `grid` (samplers.consistency_grid)
                return samplers.sample(f, x_T, schedule, nfe, sampler="consistency", rng=rng)
            if variant == "hyper_sd":  # deterministic steps along the segment ends
                return tc.strategic_stochastic_sample(f, x_T, grid, rng, schedule, gamma=0.0)
            return tc.strategic_stochastic_sample(f, x_T, grid, rng, schedule, gamma=gamma)

        return run, params
