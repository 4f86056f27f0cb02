"""GKD, on-policy distillation of language models (Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes"; docs/methods.md#gkd-on-policy-distillation).

Per step, with probability `lam` (the paper's student-data fraction) the batch's continuations are sampled from
the student itself; otherwise the dataset's tokens are used (or, with `seq_kd`, continuations sampled from the
teacher: sequence-level KD, as in TRL's `GKDTrainer`). Sampling: the first `prompt_len` tokens of each window are
the prompt; the remaining `seq_len + 1 - prompt_len` tokens are sampled with the KV cache
(`jdistill.models.generate`) at `sample_temperature` (0.9), from stop_gradient'ed parameters, so no gradient flows
through sampling. The loss is the per-token generalized JSD on the continuation only:

    loss = sum_{i >= prompt_len - 1, mask} JSD_beta(p_t,i || p_s,i) / count,   M = beta p_t + (1 - beta) p_s,

p = softmax(logits / T) (`losses.generalized_jsd`: beta = 0 is forward KL, beta = 1 reverse KL, as TRL), no T^2
(GKD-style). Defaults lam = 0.5, beta = 0.5, T = 1. LM only. Randomness: the step key is split into the on-policy
decision key and the sampling key (`GKD.keys`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill import losses
from jdistill.errors import ConfigError
from jdistill.eval.metrics import token_accuracy
from jdistill.models.generate import generate
from jdistill.recipes.base import RecipeBase, require_kind


@dataclasses.dataclass(frozen=True)
class GKD(RecipeBase):
    """GKD on-policy distillation (Agarwal et al. 2024): JSD(beta) on student-sampled continuations w.p. lam."""

    lam: float = 0.5
    beta: float = 0.5
    temperature: float = 1.0
    prompt_len: int = 32
    sample_temperature: float = 0.9
    seq_kd: bool = False
    name: str = "gkd"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta!r}")
        if not isinstance(self.prompt_len, int) or self.prompt_len < 1:
            raise ValueError(f"prompt_len must be a positive integer, got {self.prompt_len!r}")
        if self.sample_temperature < 0:
            raise ValueError(f"sample_temperature must be >= 0, got {self.sample_temperature!r}")

    def check(self, config):
        require_kind(self.name, config, "lm")
        if self.prompt_len > config.data.seq_len:
            raise ConfigError(
                f"distill.options.prompt_len={self.prompt_len} exceeds data.seq_len={config.data.seq_len}"
            )

    @staticmethod
    def keys(rng):
        """(decision key, sampling key) of a step key."""
        decision, sample = jax.random.split(rng)
        return decision, sample

    def on_policy(self, rng):
        """Whether this step trains on student samples: a Bernoulli(lam) draw from the decision key."""
        return jax.random.bernoulli(self.keys(rng)[0], self.lam)

    def sample(self, model, prompt, num_tokens: int, rng):
        """`num_tokens` continuation tokens of `prompt [batch, prompt_len]` from `model`, at stop_gradient'ed params."""
        graphdef, params = nnx.split(model)
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))
        return generate(frozen, prompt, max_new_tokens=num_tokens, rng=rng, temperature=self.sample_temperature)

    def sequences(self, student, teacher, batch, rng):
        """(inputs, targets, loss mask, on-policy flag) of this step: the window's prompt + the chosen continuation.

        The window's stream x_0..x_seq (inputs = x_0..x_{seq-1}, targets = x_1..x_seq) keeps x_0..x_{P-1}; the rest is
        sampled from the student (w.p. lam), else from the teacher (`seq_kd`) or kept. The mask keeps the batch's
        mask at the positions whose target is a continuation token (i >= P - 1).
        """
        inputs, targets = batch["inputs"], batch["targets"]
        seq_len = inputs.shape[1]
        stream = jnp.concatenate([inputs, targets[:, -1:]], axis=1).astype(jnp.int32)
        prompt, num_new = stream[:, : self.prompt_len], seq_len + 1 - self.prompt_len
        sample_key = self.keys(rng)[1]
        on_policy = self.on_policy(rng)
        if self.seq_kd:
            off_policy = lambda: self.sample(teacher, prompt, num_new, sample_key)
        else:
            off_policy = lambda: stream[:, self.prompt_len :]
        continuation = jax.lax.cond(on_policy, lambda: self.sample(student, prompt, num_new, sample_key), off_policy)
        stream = jnp.concatenate([prompt, continuation], axis=1)
        mask = jnp.broadcast_to(jnp.arange(seq_len) >= self.prompt_len - 1, targets.shape)
        if batch.get("mask") is not None:
            mask = mask & (batch["mask"] != 0)
        return stream[:, :-1], stream[:, 1:], mask, on_policy

    def loss(self, student, teacher, recipe_state, batch, rng):
        inputs, targets, mask, on_policy = self.sequences(student, teacher, batch, rng)
        student_logits = student(inputs).logits
        teacher_logits = teacher(inputs).logits
        total, count = losses.generalized_jsd(
            student_logits,
            teacher_logits,
            beta=self.beta,
            temperature=self.temperature,
            mask=mask,
            reduction="sum_count",
        )
        metrics = {
            "jsd": total / jnp.maximum(count, 1.0),
            "on_policy": on_policy.astype(jnp.float32),
            "accuracy": token_accuracy(student_logits, targets, mask),
        }
        return (total, count), metrics, ()
