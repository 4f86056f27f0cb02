"""Logit knowledge distillation from a frozen teacher (Hinton et al. 2015), any divergence of the catalogue.

    loss = distill_weight * c * D(p_t, p_s at temperature T) + label_weight * CE(y, s at T = 1)

with D the configured divergence of the catalogue (`losses.DIVERGENCES`; `forward_kl` is classic KD) and c its
temperature scaling: by default T^2 for Hinton's forward KL (keeps the gradient size independent of T) and 1 for
the GKD-style objectives (reverse_kl, generalized_jsd, tvd); an explicit `scale_by_temperature_squared` true or
false overrides it (docs/conventions.md, Temperatures). Token-level for LMs: returned as (sum, count) over
valid tokens, so gradient accumulation and data parallelism normalise by the global token count. With
`vocab_chunk > 0` (LMs) the head is applied in chunks of that many tokens (`losses.chunked_distillation_loss`):
neither `[batch, seq, vocab]` logit tensor is ever materialised. `real_vocab` (set by the job from `distill.vocab`
and the data tokenizer, docs/checkpoints.md#vocabulary-policy): D compares the distributions over the first
(V_student, V_teacher) rows only, so padded embedding rows carry no probability (`losses.real_vocab_logits`).
`teacher_seq_len` (set by the job when a `uld` teacher reads another tokenizer, docs/checkpoints.md): the teacher
reads its own tokens of the same text (`teacher_inputs [batch, teacher_seq_len]`, `jdistill.data.teacher_view`),
and D compares each student position with the teacher position that has read the same text prefix
(`teacher_index`), on the positions that have one (`teacher_aligned`) only.

Mixture-of-experts models (docs/moe.md): the teacher's MoE forward runs inside the step under `stop_gradient`
like any teacher (no router gradient, its auxiliary losses unused). A MoE student's router losses are added with
`router_aux_loss_coef` (load balancing, Switch Transformer: Fedus et al. 2021) and `router_z_loss_coef` (ST-MoE:
Zoph et al. 2022), per token, `loss += c_lb * L_lb + c_z * L_z` (the model's means over its MoE blocks), and
logged as metrics with the heaviest expert's load over the mean (`moe_max_load`, 1 = balanced) whatever the
coefficients (`add_router_losses`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill import losses
from jdistill.errors import ConfigError
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase


@dataclasses.dataclass(frozen=True)
class KnowledgeDistillation(RecipeBase):
    """Logit KD from a frozen trained teacher (Hinton et al. 2015), any divergence of the catalogue."""

    objective: str = "forward_kl"
    temperature: float = 2.0
    distill_weight: float = 1.0
    label_weight: float = 0.0
    beta: float = 0.5
    scale_by_temperature_squared: bool | None = None  # None: the divergence's default (T^2 for forward_kl only)
    vocab_chunk: int = 0
    real_vocab: tuple[int, int] | None = None  # (student, teacher) real rows; None: min of the two (uld: all)
    teacher_seq_len: int | None = None  # the teacher reads its own tokenizer's tokens (set by the job; uld only)
    router_aux_loss_coef: float = 0.0  # a MoE student's load-balancing loss weight (HF Qwen3-MoE's name)
    router_z_loss_coef: float = 0.0  # a MoE student's router z-loss weight
    name: str = "kd"
    teacher_policy: str = "frozen"

    def __post_init__(self):
        self.divergence()  # an unknown objective fails when the recipe is built, before any compute
        if self.teacher_seq_len is not None and self.divergence().same_vocabulary:
            raise ValueError(
                f"teacher_seq_len: a teacher with its own tokenizer needs objective uld, not {self.objective!r}"
            )

    def check(self, config) -> None:
        """Router loss coefficients need a student with mixture-of-experts blocks, and are >= 0."""
        for name in ("router_aux_loss_coef", "router_z_loss_coef"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"distill.options.{name}: expected a number >= 0, got {value!r}")
            if value and not config.student.model.num_moe_layers:
                raise ConfigError(
                    f"distill.options.{name}: the student has no mixture-of-experts blocks "
                    "(student.model.num_experts: 0); leave it unset"
                )

    def batch_fields(self, batch):
        """With `teacher_seq_len`: the teacher's own tokens of each window (`jdistill.data.teacher_view`)."""
        if self.teacher_seq_len is None:
            return {}
        rows, seq_len = batch["targets"].shape
        teacher_shape = (rows, self.teacher_seq_len)
        return {
            "teacher_inputs": jax.ShapeDtypeStruct(teacher_shape, jnp.int32),
            "teacher_segment_ids": jax.ShapeDtypeStruct(teacher_shape, jnp.int32),
            "teacher_positions": jax.ShapeDtypeStruct(teacher_shape, jnp.int32),
            "teacher_index": jax.ShapeDtypeStruct((rows, seq_len), jnp.int32),
            "teacher_aligned": jax.ShapeDtypeStruct((rows, seq_len), jnp.bool_),
        }

    def _teacher_forward(self, teacher, batch, *, logits: bool):
        """The teacher's output at the student's positions: on the student's tokens, or (`teacher_seq_len`) on its
        own tokens, gathered at each student position's aligned teacher position."""
        if self.teacher_seq_len is None:
            out = teacher(batch["inputs"], logits=logits, **lm_kwargs(batch))
            return out.logits if logits else out.features
        own = dict(segment_ids=batch["teacher_segment_ids"], positions=batch["teacher_positions"])
        out = teacher(batch["teacher_inputs"], logits=logits, **own)
        values = out.logits if logits else out.features
        return jnp.take_along_axis(values, batch["teacher_index"][..., None], axis=1)

    def _mask(self, batch, mask):
        """The positions D (and the CE) are taken on: with `teacher_seq_len`, the aligned ones only."""
        return mask if self.teacher_seq_len is None else mask & batch["teacher_aligned"]

    def divergence(self) -> losses.Divergence:
        return losses.divergence(self.objective)

    @property
    def temperature_scale(self):
        """c: T^2 or 1, the divergence's default unless `scale_by_temperature_squared` says otherwise."""
        return self.divergence().temperature_scale(self.temperature, self.scale_by_temperature_squared)

    def loss(self, student, teacher, recipe_state, batch, rng):
        del rng
        labels, mask = targets_and_mask(batch)
        mask = self._mask(batch, mask)
        if self.vocab_chunk and labels.ndim == 2:
            return self._chunked_loss(student, teacher, recipe_state, batch, labels, mask)
        student_out = student(batch["inputs"], **lm_kwargs(batch))
        teacher_logits = self._teacher_forward(teacher, batch, logits=True)
        (total, count), metrics = self.loss_from_logits(student_out.logits, teacher_logits, labels, mask)
        return (*self._router_losses(student_out.aux, total, count, metrics), ())

    def loss_from_logits(self, student_logits, teacher_logits, labels, mask):
        """((sum, count) over valid positions, metrics): the divergence and CE are each computed once."""
        reduce = dict(mask=mask, reduction="sum_count")
        s_real, t_real = self._real_vocab(student_logits, teacher_logits)
        distill, count = self.divergence()(s_real, t_real, temperature=self.temperature, beta=self.beta, **reduce)
        distill = distill * self.temperature_scale
        ce, _ = losses.cross_entropy(student_logits, labels, **reduce)
        per = 1.0 / jnp.maximum(count, 1.0)
        metrics = {"distill": distill * per, "ce": ce * per, "accuracy": token_accuracy(student_logits, labels, mask)}
        total = self.distill_weight * distill
        if self.label_weight:  # at label_weight 0 the CE stays a metric: no backward pass through it
            total = total + self.label_weight * ce
        return (total, count), metrics

    def _real_vocab(self, student_logits, teacher_logits):
        """The logits D compares: cut to `real_vocab` (or the smaller vocabulary), uld's left whole when unset."""
        if self.real_vocab is None and not self.divergence().same_vocabulary:
            return student_logits, teacher_logits
        return losses.real_vocab_logits(student_logits, teacher_logits, self.real_vocab)

    def _chunked_loss(self, student, teacher, recipe_state, batch, labels, mask):
        s_out = student(batch["inputs"], logits=False, **lm_kwargs(batch))
        t_features = self._teacher_forward(teacher, batch, logits=False)
        s_head, s_bias = student.head_weights()
        t_head, t_bias = teacher.head_weights()
        real_vocab = self.real_vocab
        if real_vocab is None and self.divergence().same_vocabulary:  # as the dense path: the smaller vocabulary
            real_vocab = losses.real_vocab_sizes(s_head.shape[-1], t_head.shape[-1], None)
        total, count = losses.chunked_distillation_loss(
            s_out.features,
            s_head,
            t_features,
            t_head,
            labels,
            objective=self.objective,
            temperature=self.temperature,
            beta=self.beta,
            distill_weight=self.distill_weight,
            label_weight=self.label_weight,
            scale_by_temperature_squared=self.scale_by_temperature_squared,
            mask=mask,
            student_bias=s_bias,
            teacher_bias=t_bias,
            chunk_size=self.vocab_chunk,
            reduction="sum_count",
            real_vocab=real_vocab,
        )
        metrics = {"distill_and_ce": total / jnp.maximum(count, 1.0)}
        return (*self._router_losses(s_out.aux, total, count, metrics), ())

    def _router_losses(self, aux, total, count, metrics):
        """((sum, count), metrics) with a MoE student's router losses (unchanged for a dense student)."""
        coefficients = (self.router_aux_loss_coef, self.router_z_loss_coef)
        total, metrics = add_router_losses(total, count, aux, metrics, *coefficients)
        return (total, count), metrics


def add_router_losses(total, count, aux, metrics, load_balancing_coef: float, z_coef: float):
    """(`total` + count * (c_lb * L_lb + c_z * L_z), metrics with L_lb, L_z and `moe_max_load`) from a MoE model's
    `aux` (`moe_load_balancing_loss`, `moe_router_z_loss`, `moe_tokens_per_expert [layers, E]`); `total` is a sum
    over `count` tokens, so after the step divides by the count each token carries the router losses once.
    Unchanged when `aux` has no MoE entries (a dense model)."""
    if "moe_load_balancing_loss" not in aux:
        return total, metrics
    balance, z_loss, load = aux["moe_load_balancing_loss"], aux["moe_router_z_loss"], aux["moe_tokens_per_expert"]
    metrics = dict(
        metrics,
        moe_load_balancing_loss=balance,
        moe_router_z_loss=z_loss,
        moe_max_load=jnp.max(load / jnp.maximum(jnp.mean(load, axis=-1, keepdims=True), 1e-9)),
    )
    if load_balancing_coef or z_coef:
        total = total + count * (load_balancing_coef * balance + z_coef * z_loss)
    return total, metrics
