"""One- and few-step generators distilled by distribution matching: DMD and DMD2 (docs/diffusion_generators.md).

Two networks train in one step (`jdistill.recipes.base.SecondNetwork`): the generator (the student, a denoiser copied
from the teacher and evaluated at its `generator_steps` fixed times, `jdistill.diffusion.methods.dmd.generate`) and
the fake score (also a copy of the teacher, in `recipe_state["fake_score"]`, with its own Adam of
`fake_learning_rate` and `fake_updates_per_step` updates per generator update). Per step:

    fake score:  fake_updates_per_step x  min_psi  mean lambda(t) || x0_psi(x_t, t) - sg(x) ||^2,
                 x = G(z) (held fixed), x_t = alpha(t) x + sigma(t) eps, the teacher family's denoising loss
    generator:   DMD   L_DM(x, x0_real(x_t, t), x0_fake(x_t, t)) + regression_weight mean d(G(z_ref), y_ref)
                 DMD2  L_DM only (regression_weight ignored), typically 5 fake-score updates per step
                 (`jdistill.diffusion.methods.dmd.distribution_matching_loss`)

x0_real is the teacher (classifier-free guided with `teacher_guidance_scale`), x0_fake the fake score after this
step's updates; t is drawn among [time_low, time_high] of the teacher's 1000-step sampling grid. Labels of a
conditional teacher are drawn uniformly each step (the method needs no data: the batch only sets the batch size).
DMD's regression pairs (`num_pairs` noises z_ref with their labels and the teacher's `pair_sampler` ODE samples
y_ref at `pair_nfe`) are drawn once at `init` into `recipe_state["pairs"]`. A K-step generator (DMD2) trains on its
own intermediate states (backward simulation): each example draws a step k, its input is the generator's sample
after k steps re-noised to t_k. The sampled and evaluated generator is the EMA of the student (`ema_decay`).
DMD meets RL (`reward_weight` > 0, preset `diffusion_dmd_rl`): the generator's loss also subtracts
reward_weight x mean log p(y | x) of the requested class under a digits classifier trained with `reward_seed`
(`jdistill.diffusion.feature_classifier.reward_classifier`; not the digits-FD network that scores the samples; its
weights in `recipe_state["reward"]`, held fixed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdistill.diffusion.data import to_unit
from jdistill.diffusion.feature_classifier import reward_classifier, reward_seed_problem
from jdistill.diffusion.methods import adversarial, dmd, multi_student
from jdistill.diffusion.methods.adversarial import DiscriminatorHeads, feature_width
from jdistill.diffusion.methods.common import METRICS, per_example_distance
from jdistill.diffusion.objectives import teacher_loss
from jdistill.diffusion.samplers import make_sampler
from jdistill.diffusion.schedules import predict
from jdistill.errors import ConfigError
from jdistill.recipes.base import SecondNetwork, second_network_slot
from jdistill.recipes.diffusion_distill_base import DiffusionDistillation
from jdistill.recipes.dino import copy_params

FAKE_SCORE = "fake_score"
VARIANTS = ("dmd", "dmd2", "flash")


@dataclasses.dataclass(frozen=True)
class GeneratorDistillation(DiffusionDistillation):
    """What DMD, DMD2 and SiD share: the K-step generator, the fake score and its optimizer (subclasses define the
    generator's loss)."""

    generator_steps: int = 1  # K: the generator's number of steps (DMD2's multi-step generator: 4)
    generator_time: float | None = None  # t_1, the generator's first input time (None: the noise end t_max)
    fake_learning_rate: float = 1e-4
    fake_b1: float = 0.0
    fake_b2: float = 0.999
    fake_updates_per_step: int = 1
    time_low: float = 0.02  # the losses' times: [time_low, time_high] of the teacher's 1000-step grid
    time_high: float = 0.98
    label_dropout: float = 0.0
    sampling_nfe: int = 1
    # inference-time distillation: after each generator step the teacher corrects the sample at this time (None: off)
    correction_time: float | None = None
    correction_weight: float = 0.5
    # multi-student distillation: this generator is student `student_index` of `num_students`, each owning a block of
    # the classes (`jdistill.diffusion.methods.multi_student`); it draws only its own classes' labels
    num_students: int = 1
    student_index: int = 0

    def __post_init__(self):  # own options first: the parent's check loads the teacher run
        if self.generator_steps < 1:
            raise ValueError(f"generator_steps must be >= 1, got {self.generator_steps}")
        if self.fake_learning_rate < 0 or self.fake_updates_per_step < 1:
            raise ValueError("fake_learning_rate must be >= 0 and fake_updates_per_step >= 1")
        if not 0 <= self.student_index < self.num_students:
            raise ValueError(
                f"expected 0 <= student_index < num_students, got {self.student_index}, {self.num_students}"
            )
        if self.correction_time is not None and not 0.0 <= self.correction_weight <= 1.0:
            raise ValueError(f"correction_weight must be in [0, 1], got {self.correction_weight}")
        if not 0.0 <= self.time_low < self.time_high <= 1.0:
            raise ValueError(f"expected 0 <= time_low < time_high <= 1, got {self.time_low}, {self.time_high}")
        super().__post_init__()

    # ---- checks ----
    def check(self, config):
        super().check(config)
        teacher_model = self.teacher().config.student.model
        for field in dataclasses.fields(teacher_model):
            mine, theirs = getattr(config.student.model, field.name), getattr(teacher_model, field.name)
            if mine != theirs:
                raise ConfigError(
                    f"student.model.{field.name}: the generator and the fake score are copies of the teacher, "
                    f"so it must be the teacher's {theirs!r} (got {mine!r})"
                )
        if not self.init_from_teacher:
            raise ConfigError(f"recipe {self.name!r}: the generator starts as the teacher: set init_from_teacher: true")
        if self.num_students > 1 and not self.conditional:
            raise ConfigError("distill.options.num_students: splitting the classes needs a class-conditional teacher")

    # ---- the two networks ----
    def times(self, steps: int | None = None) -> np.ndarray:
        """The generator's input times (`generator_steps` of them unless `steps`)."""
        with jax.ensure_compile_time_eval():
            return dmd.generator_times(self.schedule, steps or self.generator_steps, self.generator_time)

    def fake_optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.fake_learning_rate, b1=self.fake_b1, b2=self.fake_b2)

    def second_network(self) -> SecondNetwork:
        return SecondNetwork(FAKE_SCORE, self.fake_optimizer(), self.fake_score_loss, self.fake_updates_per_step)

    def fake_module(self, params):
        return self.denoiser_module(params)

    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        fake = second_network_slot(self.second_network(), copy_params(state["teacher"]))
        return student_params, dict(state, **{FAKE_SCORE: fake})

    # ---- samples ----
    def draw_labels(self, rng, batch: int):
        """Uniform over the classes (multi-student: over this student's own block of them); None if unconditional."""
        if not self.conditional:
            return None
        classes = jnp.asarray(multi_student.classes_of(self.student_index, self.num_students, self.num_classes))
        return classes[jax.random.randint(rng, (batch,), 0, classes.shape[0])]

    @property
    def num_classes(self) -> int:
        return self.teacher().model.num_classes

    def generator_sample(self, generator, rng, batch: int):
        """(x = G(z) `[batch, ...]`, labels or None): each example at a step k drawn uniformly (backward simulation
        for k > 0), differentiable w.r.t. the generator's last evaluation only."""
        x, labels, _ = self.generator_sample_steps(generator, rng, batch)
        return x, labels

    def generator_sample_steps(self, generator, rng, batch: int):
        """`generator_sample` and each example's generator step k `[batch]` (0: the first, from noise)."""
        keys = jax.random.split(rng, 4)
        labels = self.draw_labels(keys[0], batch)
        z = jax.random.normal(keys[1], (batch, *self.teacher().model.sample_shape))
        x0_fn = lambda x, t: predict(self.schedule, generator, x, t, labels).x0
        step = jax.random.randint(keys[2], (batch,), 0, self.generator_steps)
        x_in, t = dmd.backward_simulated_input(x0_fn, self.schedule, z, self.times(), step, keys[3])
        return x0_fn(x_in, t), labels, step

    def loss_times(self, rng, batch: int):
        return dmd.grid_times(self.schedule, rng, batch, self.time_low, self.time_high)

    def fake_score_times(self, rng, batch: int):
        """The fake score's denoising times (DMD: those of the generator's loss)."""
        return self.loss_times(rng, batch)

    def fake_score_loss(self, params, student, teacher, recipe_state, batch, rng):
        """Denoising score matching of the fake score on the generator's samples (held fixed)."""
        del teacher, recipe_state
        size = batch["inputs"].shape[0]
        sample_key, time_key, loss_key = jax.random.split(rng, 3)
        x, labels = self.generator_sample(student, sample_key, size)
        t = self.fake_score_times(time_key, size)
        per_example, _ = teacher_loss(
            self.schedule, self.fake_module(params), jax.lax.stop_gradient(x), loss_key, labels, t=t
        )
        extra = self.fake_score_extra_loss(params, jax.lax.stop_gradient(x), labels, batch, jax.random.fold_in(rng, 1))
        if extra is None:
            return jnp.mean(per_example), {}
        return jnp.mean(per_example) + extra[0], extra[1]

    def fake_score_extra_loss(self, params, x, labels, batch, rng):
        """None, or (a term added to the fake score's loss, its metrics) on the generator's samples `x` (held fixed):
        DMD2's GAN classifier."""
        del params, x, labels, batch, rng
        return None

    def scores(self, recipe_state, labels):
        """(x0_real_fn, x0_fake_fn): the teacher (guided) and the fake score of this step, parameters held fixed."""
        real = self.teacher_x0(self.teacher_module(recipe_state), labels)
        fake_model = self.fake_module(jax.lax.stop_gradient(recipe_state[FAKE_SCORE]["params"]))
        return real, lambda x, t: predict(self.schedule, fake_model, x, t, labels).x0

    # ---- sampling the trained generator ----
    def student_sampler(self, model, nfe: int | None = None):
        """`run(params, x_T, labels, rng)`: z = x_T / sigma(t_max), then the generator's `nfe` steps (its own times
        when nfe = generator_steps, else the first nfe of an (nfe + 1)-step grid). With `correction_time` (inference-
        time distillation) each step is one generator and one teacher evaluation: `nfe` (even) counts both."""
        nfe = nfe or self.sampling_nfe
        correcting = self.correction_time is not None
        if correcting and nfe % 2:
            raise ConfigError(
                f"inference-time correction: nfe counts generator + teacher passes, so it is even (got {nfe})"
            )
        graphdef, params = nnx.split(model)
        schedule, times = self.schedule, self.times(nfe // 2 if correcting else nfe)
        sigma_max = float(schedule.sigma(schedule.t_max))
        teacher = self.teacher().model if correcting else None

        @jax.jit
        def run(params, x_T, labels, rng):
            generator = nnx.merge(graphdef, params)
            x0_fn = lambda x, t: predict(schedule, generator, x, t, labels).x0
            if correcting:
                teacher_x0, inner = self.teacher_x0(teacher, labels), x0_fn

                def x0_fn(x, t):  # the generator's estimate, corrected by the teacher with fresh noise
                    eps = jax.random.normal(jax.random.fold_in(rng, 7919), x.shape)
                    return dmd.teacher_corrected(
                        inner(x, t), teacher_x0, schedule, self.correction_time, self.correction_weight, eps
                    )

            return dmd.generate(x0_fn, schedule, x_T / sigma_max, times, rng)

        return run, params


@dataclasses.dataclass(frozen=True)
class DiffusionDMD(GeneratorDistillation):
    """DMD (distribution matching + regression on the teacher's ODE pairs) and DMD2 (distribution matching alone,
    two time-scale fake-score updates, multi-step generator with backward simulation)."""

    name: str = "diffusion_dmd"
    variant: str = "dmd"
    regression_weight: float = 0.25  # DMD's lambda_reg
    regression_metric: str = "l2"
    num_pairs: int = 1024
    pair_sampler: str = "heun"
    pair_nfe: int = 35
    reward_weight: float = 0.0  # DMD meets RL: weight of -log p(y | x) under the digits classifier
    reward_seed: int = 1  # DMD meets RL: the reward classifier's seed (not the digits-FD network's, seed 0)
    # DMD2's GAN term: a head on the fake score's last-block features of noised samples (real: the training data)
    gan_weight: float = 0.0  # the generator's non-saturating GAN loss weight (DMD2: 3e-3); 0: no GAN term
    gan_classifier_weight: float = 0.01  # the head's (and fake score's) classifier loss weight (DMD2: 1e-2)
    gan_hidden: int = 64
    # Flash-DMD: generator steps k < flash_split get the distribution-matching loss, steps k >= flash_split the GAN
    flash_split: int = 2

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.variant == "dmd" and self.generator_steps != 1:
            raise ValueError("variant dmd trains a one-step generator: set generator_steps: 1 (or variant: dmd2)")
        if self.variant == "flash" and not (0 < self.flash_split < self.generator_steps and self.gan_weight > 0):
            raise ValueError(
                "variant flash splits the generator's steps between the two losses: set generator_steps >= 2, "
                f"0 < flash_split < generator_steps and gan_weight > 0 (got {self.generator_steps}, "
                f"{self.flash_split}, {self.gan_weight})"
            )
        if self.gan_weight < 0 or self.gan_classifier_weight < 0:
            raise ValueError("gan_weight and gan_classifier_weight must be >= 0")
        if self.num_pairs < 1 or self.regression_weight < 0 or self.reward_weight < 0:
            raise ValueError("num_pairs must be >= 1, regression_weight and reward_weight >= 0")
        if self.reward_weight and (problem := reward_seed_problem(self.reward_seed)):
            raise ValueError(problem)
        if self.regression_metric not in METRICS:
            raise ValueError(f"regression_metric must be one of {', '.join(METRICS)}, got {self.regression_metric!r}")
        super().__post_init__()

    @property
    def regresses(self) -> bool:
        return self.variant == "dmd" and self.regression_weight > 0

    @property
    def adversarial(self) -> bool:
        """DMD2's GAN term is on: the fake score's slot holds {"score": its weights, "head": the classifier's}."""
        return self.gan_weight > 0

    def heads_module(self, params):
        """The GAN classifier head (one, on the fake score's last block) with `params`."""
        teacher = self.teacher().model
        make = lambda: DiscriminatorHeads(feature_width(teacher), 1, self.gan_hidden, rngs=nnx.Rngs(0))
        return nnx.merge(nnx.graphdef(nnx.eval_shape(make)), params)

    def fake_module(self, params):
        return self.denoiser_module(params["score"] if self.adversarial else params)

    def fake_score_extra_loss(self, params, x, labels, batch, rng):
        """DMD2's classifier: L_D on noised training images (real) and generator samples (fake), both at the
        generator loss's times, through the fake score's features (it trains the head and the fake score)."""
        if not self.adversarial:
            return None
        data_key, time_key, noise_key = jax.random.split(rng, 3)
        real, real_labels = self.clean_data(batch, data_key)
        size = x.shape[0]
        t = self.loss_times(time_key, size)
        eps_real, eps_fake = jax.random.normal(noise_key, (2, *x.shape))
        heads, model = self.heads_module(params["head"]), self.fake_module(params)
        real_logits = adversarial.discriminator_logits(
            heads, model, dmd.renoise(self.schedule, real, t, eps_real), t, real_labels, levels=1
        )
        fake_logits = adversarial.discriminator_logits(
            heads, model, dmd.renoise(self.schedule, x, t, eps_fake), t, labels, levels=1
        )
        value = adversarial.discriminator_loss(real_logits, fake_logits)
        metrics = {"gan_classifier": value, "real_logit": jnp.mean(real_logits), "fake_logit": jnp.mean(fake_logits)}
        return self.gan_classifier_weight * value, metrics

    def check(self, config):
        super().check(config)
        if self.reward_weight > 0 and not self.conditional:
            raise ConfigError(
                "distill.options.reward_weight: the class reward needs a class-conditional digits teacher"
            )

    def init(self, student_params, teacher_params, rng):
        student_params, state = super().init(student_params, teacher_params, rng)
        if self.adversarial:
            teacher = self.teacher().model
            heads = DiscriminatorHeads(
                feature_width(teacher), 1, self.gan_hidden, rngs=nnx.Rngs(jax.random.fold_in(rng, 3))
            )
            params = {"score": state[FAKE_SCORE]["params"], "head": nnx.state(heads, nnx.Param)}
            state = dict(state, **{FAKE_SCORE: second_network_slot(self.second_network(), params)})
        if self.regresses:
            state = dict(state, pairs=self.make_pairs(state, rng))
        if self.reward_weight > 0:
            state = dict(state, reward=copy_params(nnx.state(reward_classifier(self.reward_seed))))
        return student_params, state

    def reward(self, recipe_state, x, labels):
        """mean log p(labels | x) under the reward classifier (its weights held fixed)."""
        classifier = nnx.merge(
            nnx.graphdef(reward_classifier(self.reward_seed)), jax.lax.stop_gradient(recipe_state["reward"])
        )
        return jnp.mean(dmd.class_log_likelihood(classifier(to_unit(x)).logits, labels))

    def make_pairs(self, state, rng):
        """{"noise", "samples"[, "labels"]}: `num_pairs` noises and the teacher's ODE samples from them."""
        teacher = self.teacher_module(state)
        schedule = self.teacher_schedule
        noise = jax.random.normal(rng, (self.num_pairs, *teacher.sample_shape))
        labels = jnp.arange(self.num_pairs) % teacher.num_classes if self.conditional else None
        run, _ = make_sampler(
            teacher, schedule, sampler=self.pair_sampler, nfe=self.pair_nfe, guidance_scale=self.teacher_guidance_scale
        )
        x_T = float(schedule.sigma(schedule.t_max)) * noise
        chunks = []
        for start in range(0, self.num_pairs, 1024):
            part = slice(start, start + 1024)
            chunks.append(run(state["teacher"], x_T[part], None if labels is None else labels[part], rng))
        pairs = {"noise": noise, "samples": jnp.concatenate(chunks)}
        return pairs if labels is None else dict(pairs, labels=labels)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher
        size = batch["inputs"].shape[0]
        sample_key, time_key, noise_key, pair_key = jax.random.split(rng, 4)
        x, labels, step = self.generator_sample_steps(student, sample_key, size)
        t = self.loss_times(time_key, size)
        eps = jax.random.normal(noise_key, x.shape)
        x_t = jax.lax.stop_gradient(dmd.renoise(self.schedule, x, t, eps))
        real, fake = self.scores(recipe_state, labels)
        # Flash-DMD: the early (high-noise) generator steps get distribution matching, the later ones the GAN term
        dm_weights, gan_weights = dmd.flash_weights(step, self.flash_split) if self.variant == "flash" else (None, None)
        matching = dmd.distribution_matching_loss(x, real(x_t, t), fake(x_t, t), dm_weights)
        metrics = {"distribution_matching": matching}
        if self.adversarial:
            fake_params = jax.lax.stop_gradient(recipe_state[FAKE_SCORE]["params"])
            logits = adversarial.discriminator_logits(
                self.heads_module(fake_params["head"]),
                self.fake_module(fake_params),
                dmd.renoise(self.schedule, x, t, eps),  # with the gradient to the generator, through the features
                t,
                labels,
                levels=1,  # DMD2's head reads the fake score's last block
            )
            gan = adversarial.generator_loss(logits, weights=gan_weights)
            matching, metrics = matching + self.gan_weight * gan, dict(metrics, gan=gan)
        if self.reward_weight > 0:
            reward = self.reward(recipe_state, x, labels)
            matching, metrics = matching - self.reward_weight * reward, dict(metrics, reward=reward)
        if not self.regresses:
            return matching, metrics, ()
        pairs = recipe_state["pairs"]
        pick = jax.random.randint(pair_key, (size,), 0, self.num_pairs)
        pair_labels = pairs["labels"][pick] if "labels" in pairs else None
        z, t_1 = pairs["noise"][pick], self.times()[0]
        one_step = predict(self.schedule, student, dmd.noise_input(self.schedule, z, t_1), t_1, pair_labels).x0
        regression = jnp.mean(per_example_distance(one_step, pairs["samples"][pick], self.regression_metric))
        metrics["regression"] = regression
        return matching + self.regression_weight * regression, metrics, ()
