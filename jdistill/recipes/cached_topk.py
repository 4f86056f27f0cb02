"""Sparse KD from an offline teacher cache: the teacher's top-k log-probabilities per token, read with the batch
(docs/methods.md#top-k-cached-teacher; the cache: `jdistill.data.teacher_cache`).

No teacher runs during the student's training. Each batch carries `teacher_topk_ids` and `teacher_topk_logprobs`
`[batch, seq, k]` (written once by `jdistill cache-teacher`, or by the job right after its teacher stage, at
temperature T: log_softmax(teacher_logits / T), then top-k). Per token, with a tail bucket on both sides so both
distributions stay normalised over k + 1 categories (`losses.topk_kd`):

    loss = distill_weight * c * D(q_{1..k}, 1 - sum q || p_s,{1..k}, 1 - sum p_s) + label_weight * CE(y, s),

p_s = softmax(s / T), D forward KL (`objective: forward_kl`, the classic KD direction), reverse KL, or the
generalized JSD with `beta` (the catalogue's divergences that are members of the generalized-JSD family; tvd is
not); c the divergence's default temperature scaling (T^2 for forward KL only), unless
`scale_by_temperature_squared` says otherwise (docs/conventions.md, Temperatures). With k = vocab it is dense KD.
LM only; (sum, count) over valid tokens. `top_k` is how many entries are cached (and used); `logprob_dtype` how they are
stored (float16 halves the cache at ~1e-3 precision on the log-probs). The job (`jdistill train`) writes the cache
right after its teacher stage, for the windows the student reads, unless `cache_dir` names one written beforehand
by `jdistill cache-teacher` (then no teacher is trained or loaded).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jdistill import losses
from jdistill.errors import ConfigError
from jdistill.eval.batch import lm_kwargs, targets_and_mask
from jdistill.eval.metrics import token_accuracy
from jdistill.recipes.base import RecipeBase, require_kind


@dataclasses.dataclass(frozen=True)
class CachedTopK(RecipeBase):
    """Sparse KD from an offline teacher cache: top-k log-probs per token, tail bucket on both sides."""

    top_k: int = 32
    logprob_dtype: str = "float16"
    cache_dir: str | None = None
    objective: str = "forward_kl"
    temperature: float = 1.0
    distill_weight: float = 1.0
    label_weight: float = 0.0
    beta: float = 0.5
    scale_by_temperature_squared: bool | None = None  # None: the divergence's default (T^2 for forward_kl only)
    name: str = "cached_topk"
    teacher_policy: str = "cached_topk"

    def __post_init__(self):
        if self.divergence().topk_beta(self.beta) is None:
            topk = [name for name, entry in losses.DIVERGENCES.items() if entry.topk_beta(self.beta) is not None]
            raise ValueError(f"objective must be one of {', '.join(topk)} with a top-k teacher, got {self.objective!r}")
        if not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.logprob_dtype not in ("float16", "float32"):
            raise ValueError(f"logprob_dtype must be float16 or float32, got {self.logprob_dtype!r}")

    def divergence(self) -> losses.Divergence:
        return losses.divergence(self.objective)

    @property
    def needs_teacher_stage(self) -> bool:
        """No teacher stage when `cache_dir` names a cache written beforehand."""
        return not self.cache_dir

    def check(self, config):
        require_kind(self.name, config, "lm")

    def batch_fields(self, batch):
        """The cache's top-k ids (int32) and log-probs (float32) per token (`attach_teacher_cache`)."""
        shape = (*batch["targets"].shape, self.top_k)
        return {
            "teacher_topk_ids": jax.ShapeDtypeStruct(shape, jnp.int32),
            "teacher_topk_logprobs": jax.ShapeDtypeStruct(shape, jnp.float32),
        }

    @property
    def jsd_beta(self) -> float:
        """The generalized-JSD beta of the objective: 0 forward KL, 1 reverse KL, `beta` for generalized_jsd."""
        beta = self.divergence().topk_beta(self.beta)
        assert beta is not None, "__post_init__ checked that the divergence has a top-k form"
        return beta

    def loss(self, student, teacher, recipe_state, batch, rng):
        del teacher, rng
        if "teacher_topk_ids" not in batch:
            raise ConfigError(
                "recipe cached_topk: the batches carry no teacher cache (teacher_topk_ids); train with "
                "`jdistill train`, which writes and attaches it, or attach one with "
                "jdistill.data.teacher_cache.attach_teacher_cache"
            )
        labels, mask = targets_and_mask(batch)
        logits = student(batch["inputs"], **lm_kwargs(batch)).logits
        reduce = dict(mask=mask, reduction="sum_count")
        distill, count = losses.topk_kd(
            logits,
            batch["teacher_topk_logprobs"],
            batch["teacher_topk_ids"],
            beta=self.jsd_beta,
            temperature=self.temperature,
            **reduce,
        )
        distill = distill * self.divergence().temperature_scale(self.temperature, self.scale_by_temperature_squared)
        ce, _ = losses.cross_entropy(logits, labels, **reduce)
        per = 1.0 / jnp.maximum(count, 1.0)
        metrics = {"distill": distill * per, "ce": ce * per, "accuracy": token_accuracy(logits, labels, mask)}
        return (self.distill_weight * distill + self.label_weight * ce, count), metrics, ()
