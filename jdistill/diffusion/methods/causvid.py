"""From bidirectional to causal (CausVid; Yin et al. 2025, "From Slow Bidirectional to Fast Autoregressive Video
Diffusion Models") on a toy video: sequences of digit frames (docs/diffusion_generators.md).

- Data (`digit_video`): a video of F frames counts up from its label c: frame f is an 8x8 digit of class (c + f) mod
  10, each frame a different training image of that class (drawn from the batch).
- `VideoDenoiser`: a DiT over all frames' patches at once (learned positions over frames x patches, adaLN-Zero per
  frame from time + class + a learned frame embedding + a learned (frame, class) embedding, each frame with its own
  time t_f). Bidirectional (the
  teacher and the fake score: every token attends to every frame) or *block-causal* (the student: a frame's tokens
  attend to its own and earlier frames' tokens only).
- A causal denoiser runs one frame at a time with a KV cache (`frame_forward`): frame f's queries attend to the cached
  keys / values of frames < f and to its own. `causal_forward_with_cache` is the same computation as the full causal
  pass with per-frame times (tested), so the student is trained and sampled frame by frame.
- `generate_video`: the few-step causal student's autoregressive sampling: for each frame, K denoising steps at the
  generator's times (re-noising between them, as `dmd.generate`) with the earlier frames in the cache, then one
  pass of the finished frame at the context time (the data end) to add its keys / values to the cache. NFE per frame
  = K (+ 1 cache pass).

CausVid distils the bidirectional teacher into this causal student with DMD (asymmetric distillation: the teacher and
the fake score see the whole generated video bidirectionally); see `jdistill.recipes.diffusion_causvid`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import Array

from jdistill.diffusion.denoisers import ZERO, patchify, unpatchify
from jdistill.diffusion.embeddings import ConditionEmbedding
from jdistill.diffusion.methods.dmd import noise_input, renoise
from jdistill.diffusion.schedules import Schedule
from jdistill.models.config import ModelConfig
from jdistill.nn import MLP
from jdistill.nn.norms import rms_normalize
from jdistill.nn.params import dense, param


def digit_video(images: Array, labels: Array, frames: int, rng, num_classes: int = 10) -> Array:
    """`[batch, frames, H, W, C]`: video i counts up from labels[i] (frame f of class (labels[i] + f) mod C); frame 0
    is images[i], each later frame a random batch image of its class (images[i] itself if the batch has none)."""
    batch = images.shape[0]
    chosen = [jnp.arange(batch)]
    for f, key in zip(range(1, frames), jax.random.split(rng, max(frames - 1, 1)), strict=False):
        wanted = (labels + f) % num_classes  # [batch]
        score = jax.random.uniform(key, (batch, batch)) + (labels[None, :] == wanted[:, None])  # ones of its class win
        pick = jnp.argmax(score, axis=-1)
        chosen.append(jnp.where(labels[pick] == wanted, pick, jnp.arange(batch)))
    return images[jnp.stack(chosen, axis=1)]


def block_causal_mask(frames: int, tokens_per_frame: int) -> np.ndarray:
    """`[F T, F T]` bool: token i may attend to token j iff frame(j) <= frame(i)."""
    frame = np.repeat(np.arange(frames), tokens_per_frame)
    return frame[None, :] <= frame[:, None]


def _modulate(x, shift, scale):
    return (rms_normalize(x, 1e-6) * (1.0 + scale) + shift).astype(x.dtype)


class VideoBlock(nnx.Module):
    """x + g1 attn(mod(x)), x + g2 mlp(mod(x)); the modulation per token from its frame's condition; attention may
    read cached keys / values of earlier frames."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        d = config.d_model
        self.heads = config.num_heads
        self.qkv = dense(d, 3 * d, ("embed", "mlp"), rngs=rngs)
        self.proj = dense(d, d, ("mlp", "embed"), rngs=rngs)
        self.mlp = MLP(d, config.mlp_dim, config.activation, use_bias=True, rngs=rngs)
        self.modulation = dense(d, 6 * d, ("embed", "mlp"), kernel_init=ZERO, rngs=rngs)

    def __call__(self, x, c, mask=None, prefix=None):
        """x, c `[batch, tokens, d]`; `mask [tokens, prefix + tokens]` or None; `prefix` (k, v) `[batch, P, heads,
        head_dim]` or None. Returns (x, (k, v) of these tokens)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.modulation(jax.nn.silu(c)), 6, axis=-1)
        batch, tokens, d = x.shape
        q, k, v = jnp.split(self.qkv(_modulate(x, shift1, scale1)), 3, axis=-1)
        q, k, v = (a.reshape(batch, tokens, self.heads, d // self.heads) for a in (q, k, v))
        keys, values = (
            (k, v) if prefix is None else (jnp.concatenate([prefix[0], k], 1), jnp.concatenate([prefix[1], v], 1))
        )
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, keys).astype(jnp.float32) / np.sqrt(d // self.heads)
        if mask is not None:
            logits = jnp.where(mask, logits, -1e30)
        attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1).astype(v.dtype), values)
        x = x + gate1 * self.proj(attended.reshape(batch, tokens, d))
        return x + gate2 * self.mlp(_modulate(x, shift2, scale2)), (k, v)


class VideoDenoiser(nnx.Module):
    """A denoiser of `[batch, frames, H, W, C]` videos called as `model(x, t, labels)` with t `[batch]` (one time) or
    `[batch, frames]` (a time per frame); `causal`: block-causal attention over frames."""

    def __init__(
        self, config: ModelConfig, schedule: Schedule, frames: int, *, num_classes: int, causal: bool, rngs: nnx.Rngs
    ):
        self.config, self.schedule, self.frames, self.causal = config, schedule, frames, causal
        d = config.d_model
        self.num_classes = num_classes
        self.tokens_per_frame = config.num_patches
        patch_dim = config.patch_size**2 * config.num_channels
        self.embed = dense(patch_dim, d, ("patch", "embed"), rngs=rngs)
        positions = 0.02 * jax.random.normal(rngs.params(), (frames * self.tokens_per_frame, d))
        self.position = param(positions, ("position", "embed"))
        self.condition = ConditionEmbedding(d, num_classes=num_classes, rngs=rngs)
        # the frame's index joins its condition, so the adaLN modulation can tell frames apart (frame f of a video
        # of label y shows class y + f)
        self.frame_condition = param(0.02 * jax.random.normal(rngs.params(), (frames, d)), ("position", "embed"))
        # and the (frame, label) pair its own embedding: the class a frame shows, (y + f) mod C, is not a sum of a
        # label and a frame term, so the additive condition alone barely learned to follow the label (frame
        # class accuracy 0.14 at 2000 teacher steps)
        if num_classes:
            pairs = 0.02 * jax.random.normal(rngs.params(), (frames, num_classes + 1, d))
            self.frame_class = param(pairs, ("position", "vocab", "embed"))
        self.blocks = nnx.List([VideoBlock(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_modulation = dense(d, 2 * d, ("embed", "mlp"), kernel_init=ZERO, rngs=rngs)
        self.out = dense(d, patch_dim, ("embed", "patch"), kernel_init=ZERO, rngs=rngs)

    @property
    def null_label(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, ...]:
        cfg = self.config
        return (self.frames, cfg.image_size, cfg.image_size, cfg.num_channels)

    def _tokens(self, x, t, labels, first_frame: int):
        """(tokens `[batch, n T, d]`, per-token condition) of frames `first_frame ...` given as x `[batch, n, H, W, C]`,
        t `[batch, n]`."""
        cfg = self.config
        batch, n = x.shape[:2]
        x_in, t_in = self.schedule.model_inputs(x.reshape(batch * n, *x.shape[2:]), t.reshape(-1))
        frame_labels = None if labels is None else jnp.repeat(jnp.asarray(labels), n)
        c = self.condition(t_in, frame_labels, None).reshape(batch, n, -1)
        c = c + self.frame_condition[...][first_frame : first_frame + n]
        if self.num_classes:
            video_labels = jnp.full((batch,), self.null_label) if labels is None else jnp.asarray(labels)
            pairs = self.frame_class[...][first_frame : first_frame + n]  # [n, classes + 1, d]
            c = c + jnp.swapaxes(pairs[:, jnp.broadcast_to(video_labels, (batch,))], 0, 1)
        c = c[:, :, None]
        c = jnp.broadcast_to(c, (batch, n, self.tokens_per_frame, c.shape[-1])).reshape(
            batch, n * self.tokens_per_frame, -1
        )
        h = self.embed(patchify(x_in, cfg.patch_size)).reshape(batch, n * self.tokens_per_frame, -1)
        span = slice(first_frame * self.tokens_per_frame, (first_frame + n) * self.tokens_per_frame)
        return h + self.position[...][span], c

    def _output(self, h, c, batch: int, n: int, dtype):
        cfg = self.config
        shift, scale = jnp.split(self.final_modulation(jax.nn.silu(c)), 2, axis=-1)
        out = self.out(_modulate(h, shift, scale)).reshape(batch * n, self.tokens_per_frame, -1)
        frames = unpatchify(out, cfg.patch_size, cfg.image_size, cfg.image_size, cfg.num_channels)
        return frames.reshape(batch, n, *frames.shape[1:]).astype(dtype)

    def __call__(self, x, t, labels=None, guidance_scale=None):
        del guidance_scale
        batch, frames = x.shape[:2]
        t = jnp.asarray(t, jnp.float32)
        t = jnp.broadcast_to(t, (batch,)) if t.ndim <= 1 else t  # a scalar, [batch] or [batch, frames]
        t = jnp.broadcast_to(t.reshape(batch, -1), (batch, frames))
        h, c = self._tokens(x, t, labels, 0)
        mask = jnp.asarray(block_causal_mask(frames, self.tokens_per_frame)) if self.causal else None
        for block in self.blocks:
            h, _ = block(h, c, mask)
        return self._output(h, c, batch, frames, x.dtype)

    def frame_forward(self, x, t, labels, frame: int, cache):
        """(raw output `[batch, H, W, C]`, this frame's (k, v) per block) of frame `frame` at x `[batch, H, W, C]`, t
        `[batch]`, attending to `cache` (per block (k, v) of frames < `frame`, or None for the first frame)."""
        batch = x.shape[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
        h, c = self._tokens(x[:, None], t[:, None], labels, frame)
        new = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, c, None, None if cache is None else cache[i])
            new.append(kv)
        return self._output(h, c, batch, 1, x.dtype)[:, 0], new


def extend(cache, new):
    """The cache with one more frame's (k, v) per block appended."""
    if cache is None:
        return new
    return [
        (jnp.concatenate([k0, k1], 1), jnp.concatenate([v0, v1], 1))
        for (k0, v0), (k1, v1) in zip(cache, new, strict=True)
    ]


def causal_forward_with_cache(model: VideoDenoiser, x, t, labels=None):
    """The causal model's raw output on a whole video `[batch, F, ...]` with per-frame times `t [batch, F]`, computed
    frame by frame with the KV cache: equal to `model(x, t, labels)` with `model.causal`."""
    cache, outputs = None, []
    for f in range(x.shape[1]):
        raw, kv = model.frame_forward(x[:, f], t[:, f], labels, f, cache)
        outputs.append(raw)
        cache = extend(cache, kv)
    return jnp.stack(outputs, axis=1)


def generate_video(model: VideoDenoiser, schedule: Schedule, z, times, labels, rng, context_time: float):
    """The causal student's video from noise `z [batch, F, H, W, C]`: per frame, the K-step generator at `times`
    (fresh noise between steps) attending to the cache, then the finished frame's pass at `context_time` to extend
    the cache. Differentiable."""
    times = np.asarray(times, np.float64)
    batch, frames = z.shape[:2]
    keys = jax.random.split(rng, frames * len(times))
    cache, video = None, []
    for f in range(frames):
        x = noise_input(schedule, z[:, f], times[0])
        for k, t in enumerate(times):
            t_b = jnp.full((batch,), t, jnp.float32)
            raw, _ = model.frame_forward(x, t_b, labels, f, cache)
            x0 = schedule.to_x0(x, t_b, raw)
            if k + 1 < len(times):
                x = renoise(schedule, x0, times[k + 1], jax.random.normal(keys[f * len(times) + k], x0.shape))
        video.append(x0)
        _, kv = model.frame_forward(x0, jnp.full((batch,), context_time, jnp.float32), labels, f, cache)
        cache = extend(cache, kv)
    return jnp.stack(video, axis=1)
