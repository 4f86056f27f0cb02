"""GKD, on-policy distillation of language models (Agarwal et al. 2024, "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes"; docs/methods.md#gkd-on-policy-distillation).

Batches are prompt/completion pairs (`batch_layout = "prompt_completion"`: `prompt [B, P]` left-padded with
`prompt_mask`, `completion [B, C]` right-padded with `completion_mask`, its final EOS included), or byte windows
(`inputs`/`targets`/`mask`), cut into the first `prompt_len` tokens and the rest. Per step, with probability `lam`
(the paper's student-data fraction) the completion is sampled from the student itself: `max_new_tokens` tokens
(default: the completion width C) with the KV cache inside the step (`jdistill.models.generate`), at
`sample_temperature`, from stop_gradient'ed parameters, stopping per row at `eos_id`; otherwise the dataset's
completion is used (or, with `seq_kd`, one sampled from the teacher: sequence-level KD, as in TRL's
`GKDTrainer`). The loss is the per-token generalized JSD on the completion tokens only (through its EOS,
nothing after it):

    loss = sum_{j: completion_mask} JSD_beta(p_t,j || p_s,j) / count,   M = beta p_t + (1 - beta) p_s,

p = softmax(logits / T) of the next-token distribution that predicts completion token j (beta = 0 is forward
KL, beta = 1 reverse KL, as TRL), no T^2 (GKD-style). Defaults lam = 0.5, beta = 0.5, T = 1. LM only.

Speed: each row is rotated so that its real prompt and completion come first and its left padding last, so one
plain causal forward per model (positions 0.. from the row's first real token, no attention mask) sees every row
as if alone; the output head runs only at the completion positions, chunk by chunk, with the student's gradient
formed in the forward pass (`losses.chunked_jsd_at_positions`): neither model's `[batch, seq, vocab]` logits exist.
Metrics: `jsd`, `on_policy`, `generated_tokens` (real tokens sampled this step, EOS included; 0 when nothing
was sampled), `generated_length` (their mean per row); the caller divides by step time for tokens/s.
Randomness: the step key is split into the on-policy decision key and the sampling key (`GKD.keys`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.errors import ConfigError
from jdistill.losses.chunked_positions import chunked_jsd_at_positions
from jdistill.models.generate import completion_mask, sample_completions
from jdistill.recipes.base import RecipeBase, require_kind


def _pad_to(x, width: int, value):
    """`x [batch, n]` padded on the right with `value` to `[batch, width]`."""
    return jnp.pad(x, [(0, 0), (0, width - x.shape[1])], constant_values=value)


@dataclasses.dataclass(frozen=True)
class GKD(RecipeBase):
    """GKD on-policy distillation (Agarwal et al. 2024): JSD(beta) on student-sampled completions w.p. lam."""

    lam: float = 0.5
    beta: float = 0.5
    temperature: float = 1.0
    prompt_len: int = 32
    sample_temperature: float = 0.9
    seq_kd: bool = False
    max_new_tokens: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    chunk_size: int = 1024
    name: str = "gkd"
    teacher_policy: str = "frozen"

    batch_layout = "prompt_completion"  # the data gives prompt / completion batches (docs/methods.md)

    def __post_init__(self):
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {self.lam!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta!r}")
        if not isinstance(self.prompt_len, int) or self.prompt_len < 1:
            raise ValueError(f"prompt_len must be a positive integer, got {self.prompt_len!r}")
        if self.sample_temperature < 0:
            raise ValueError(f"sample_temperature must be >= 0, got {self.sample_temperature!r}")
        if self.max_new_tokens is not None and (not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive integer or null, got {self.max_new_tokens!r}")
        if not isinstance(self.chunk_size, int) or self.chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {self.chunk_size!r}")

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

    def prompt_completion(self, batch):
        """(prompt, prompt_mask or None, completion, completion_mask) of a batch.

        A prompt/completion batch as it is. A window batch (stream x_0..x_S with inputs = x_0..x_{S-1},
        targets = x_1..x_S): prompt = x_0..x_{P-1} (P = prompt_len, no padding: mask None), completion =
        x_P..x_S, its mask the batch's mask of the targets that are completion tokens.
        """
        if "prompt" in batch:
            prompt_mask = jnp.asarray(batch["prompt_mask"], bool)
            return batch["prompt"], prompt_mask, batch["completion"], jnp.asarray(batch["completion_mask"], bool)
        inputs, targets = batch["inputs"], batch["targets"]
        stream = jnp.concatenate([inputs, targets[:, -1:]], axis=1).astype(jnp.int32)
        completion = stream[:, self.prompt_len :]
        mask = batch.get("mask")
        completion_mask = jnp.ones(completion.shape, bool) if mask is None else mask[:, self.prompt_len - 1 :] != 0
        return stream[:, : self.prompt_len], None, completion, completion_mask

    def sample(self, model, prompt, prompt_mask, num_tokens: int, rng):
        """`num_tokens` completion tokens of the left-padded `prompt` from `model`, at stop_gradient'ed params."""
        graphdef, params = nnx.split(model)
        frozen = nnx.merge(graphdef, jax.lax.stop_gradient(params))
        return sample_completions(
            frozen,
            prompt,
            prompt_mask,
            max_new_tokens=num_tokens,
            rng=rng,
            temperature=self.sample_temperature,
            eos_id=self.eos_id,
            pad_id=self.pad_id,
        )

    def completions(self, student, teacher, batch, rng):
        """(prompt, prompt_mask, completion [B, W], completion_mask [B, W], on-policy flag, sampled flag) of this
        step: the student's samples (w.p. lam), else the teacher's (`seq_kd`) or the dataset's completion.
        W = max(max_new_tokens, C); the shorter side is padded (mask False)."""
        prompt, prompt_mask, completion, completion_mask_ = self.prompt_completion(batch)
        num_new = self.max_new_tokens or completion.shape[1]
        width = max(num_new, completion.shape[1])
        pad = self.pad_id if self.pad_id is not None else (self.eos_id if self.eos_id is not None else 0)
        sample_key = self.keys(rng)[1]
        on_policy = self.on_policy(rng)

        def sampled(model):
            tokens = self.sample(model, prompt, prompt_mask, num_new, sample_key)
            real = completion_mask(tokens, self.eos_id)
            return _pad_to(tokens, width, pad), _pad_to(real, width, False)

        def dataset():
            return _pad_to(completion.astype(jnp.int32), width, pad), _pad_to(completion_mask_, width, False)

        off_policy = (lambda: sampled(teacher)) if self.seq_kd else dataset
        if self.lam == 1.0:
            tokens, mask = sampled(student)
        elif self.lam == 0.0:
            tokens, mask = off_policy()
        else:
            tokens, mask = jax.lax.cond(on_policy, lambda: sampled(student), off_policy)
        return prompt, prompt_mask, tokens, mask, on_policy, on_policy | self.seq_kd

    def loss(self, student, teacher, recipe_state, batch, rng):
        prompt, prompt_mask, completion, mask, on_policy, sampled = self.completions(student, teacher, batch, rng)
        batch_size, prompt_width = prompt.shape
        width = prompt_width + completion.shape[1]
        lengths = jnp.full((batch_size,), prompt_width) if prompt_mask is None else jnp.sum(prompt_mask, axis=1)
        # Rotate each row left by its padding: real prompt, completion, then the padding (never read causally).
        tokens = jnp.concatenate([prompt.astype(jnp.int32), completion], axis=1)
        if prompt_mask is not None:
            source = (jnp.arange(width)[None, :] + (prompt_width - lengths)[:, None]) % width
            tokens = jnp.take_along_axis(tokens, source, axis=1)
        inputs = tokens[:, :-1]
        positions = lengths[:, None] - 1 + jnp.arange(completion.shape[1])[None, :]  # predicts completion token j
        student_head, student_bias = student.head_weights()
        teacher_head, teacher_bias = teacher.head_weights()
        total, count = chunked_jsd_at_positions(
            student(inputs, logits=False).features,
            student_head,
            teacher(inputs, logits=False).features,
            teacher_head,
            positions,
            mask=mask,
            beta=self.beta,
            temperature=self.temperature,
            student_bias=student_bias,
            teacher_bias=teacher_bias,
            chunk_size=self.chunk_size,
        )
        generated = jnp.where(sampled, jnp.sum(mask), 0).astype(jnp.float32)
        metrics = {
            "jsd": total / jnp.maximum(count, 1.0),
            "on_policy": on_policy.astype(jnp.float32),
            "generated_tokens": generated,
            "generated_length": generated / batch_size,
        }
        return (total, count), metrics, ()
