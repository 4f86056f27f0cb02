"""The config-driven gated transformer: an encoder classifier over image patches or a decoder LM over tokens."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jdistill.models.config import ModelConfig
from jdistill.models.outputs import ModelOutput
from jdistill.nn import GLUMLP, MLP, GatedSelfAttention, RMSNorm
from jdistill.nn.deltanet import GatedDeltaNet
from jdistill.nn.exits import ExitHeads
from jdistill.nn.gateskip import ResidualGate, gate_sparsity_loss, mean_gate, skip_mask, skip_tokens
from jdistill.nn.kv_cache import KVCache
from jdistill.nn.moe import MoE
from jdistill.nn.params import dense, embedding, param
from jdistill.nn.regla import ReGLA
from jdistill.partitioning import constrain_batch


class Block(nnx.Module):
    """Pre-norm block: `h + attn(norm(h))`, then `h + mlp(norm(h))`. With `residual_gates` each branch is scaled
    by a GateSkip gate `sigmoid(W stopgrad(h) + b)` (docs/methods.md#gateskip) recorded in `stats["residual_gates"]`.
    In a mixture-of-experts block (`config.is_moe_layer(index)`) `mlp` is a `jdistill.nn.moe.MoE`, whose routing
    statistics go to the `moe_stats` dict when one is passed."""

    def __init__(self, config: ModelConfig, index: int = 0, *, rngs: nnx.Rngs):
        causal = config.kind == "lm"
        dtype = jnp.dtype(config.dtype)
        self.attention_norm = RMSNorm(config.d_model, eps=config.norm_eps, zero_centered=config.norm_zero_centered)
        self.linear_attention: GatedDeltaNet | ReGLA
        self.mlp: GLUMLP | MLP | MoE
        if config.layer_type(index) == "deltanet":
            self.linear_attention = GatedDeltaNet(config, rngs=rngs)
        elif config.layer_type(index) == "regla":
            self.linear_attention = ReGLA(config.d_model, config.num_heads, dtype=dtype, rngs=rngs)
        else:
            self.attention = GatedSelfAttention(config, causal=causal, rope=causal, rngs=rngs)
        self.mlp_norm = RMSNorm(config.d_model, eps=config.norm_eps, zero_centered=config.norm_zero_centered)
        if config.is_moe_layer(index):
            self.mlp = MoE(
                config.d_model,
                config.resolved_moe_mlp_dim,
                config.num_experts,
                config.experts_per_token,
                norm_topk_prob=config.norm_topk_prob,
                shared_dim=config.shared_expert_dim,
                dispatch=config.moe_dispatch,
                dtype=dtype,
                rngs=rngs,
            )
        elif config.mlp == "glu":
            self.mlp = GLUMLP(
                config.d_model,
                config.mlp_dim,
                config.activation,
                order=config.glu_order,
                use_bias=config.mlp_bias,
                dtype=dtype,
                rngs=rngs,
            )
        else:
            self.mlp = MLP(
                config.d_model, config.mlp_dim, config.activation, use_bias=config.mlp_bias, dtype=dtype, rngs=rngs
            )
        if config.residual_gates:
            self.attention_gate = ResidualGate(config.d_model, dtype=dtype, rngs=rngs)
            self.mlp_gate = ResidualGate(config.d_model, dtype=dtype, rngs=rngs)

    def _residual(self, h, branch_out, gate_name: str, stats, skip_budget=None):
        if not hasattr(self, gate_name):
            return h + branch_out
        h_out, gate = getattr(self, gate_name)(h, branch_out)
        if stats is not None:
            stats.setdefault("residual_gates", []).append(gate)
        if skip_budget is None:
            return h_out
        return skip_tokens(h, h_out, skip_mask(mean_gate(gate), skip_budget))

    def _mlp(self, x, moe_stats: dict | None = None):
        if not isinstance(self.mlp, MoE):
            return self.mlp(x)
        y, stats = self.mlp(x)
        if moe_stats is not None:
            moe_stats.update(stats)
        return y

    def __call__(
        self,
        h,
        *,
        positions=None,
        segment_ids=None,
        stats: dict | None = None,
        head_gates=None,
        skip_budget=None,
        moe_stats: dict | None = None,
    ):
        if hasattr(self, "linear_attention"):
            attended = self.linear_attention(self.attention_norm(h))
        else:
            attended = self.attention(
                self.attention_norm(h), positions=positions, segment_ids=segment_ids, stats=stats, head_gates=head_gates
            )
        h = self._residual(h, attended, "attention_gate", stats, skip_budget)
        return self._residual(h, self._mlp(self.mlp_norm(h), moe_stats), "mlp_gate", stats, skip_budget)

    def init_cache(self, batch: int, max_len: int):
        """A key/value cache (attention), a conv + recurrent state (Gated DeltaNet) or a recurrent state (ReGLA)."""
        mixer = getattr(self, "linear_attention", None)
        if isinstance(mixer, ReGLA):
            return jnp.zeros((batch, mixer.num_heads, mixer.head_dim, mixer.head_dim), jnp.float32)
        if isinstance(mixer, GatedDeltaNet):
            return mixer.init_state(batch)
        cfg = self.attention.config
        return KVCache.zeros(batch, max_len, cfg.resolved_kv_heads, cfg.resolved_head_dim, jnp.dtype(cfg.dtype))

    def fill_cache(self, h, *, positions, cache):
        """The cache after writing the keys and values this block's attention computes from `h`, without running
        the block (attention blocks only; see `Attention.fill_cache`)."""
        return self.attention.fill_cache(self.attention_norm(h), positions=positions, cache=cache)

    def decode(self, h, *, positions, cache):
        mixer = getattr(self, "linear_attention", None)
        if isinstance(mixer, ReGLA):
            mode = "recurrent" if h.shape[1] == 1 else "chunked"
            attended, cache = mixer(self.attention_norm(h), mode=mode, initial_state=cache, return_state=True)
        elif isinstance(mixer, GatedDeltaNet):
            attended, cache = mixer.decode(self.attention_norm(h), state=cache)
        else:
            attended, cache = self.attention.decode(self.attention_norm(h), positions=positions, cache=cache)
        h = self._residual(h, attended, "attention_gate", None)
        return self._residual(h, self._mlp(self.mlp_norm(h)), "mlp_gate", None), cache


def _positions(count: int, d_model: int, rngs: nnx.Rngs) -> nnx.Param:
    """A learned position table `[count, d_model]`, N(0, 0.02^2)."""
    return param(0.02 * jax.random.normal(rngs.params(), (count, d_model)), ("position", "embed"))


class Transformer(nnx.Module):
    """`model(inputs) -> ModelOutput`.

    Classifier: `inputs` float `[batch, height, width, channels]` (or int `[batch, seq]` with
    `classifier_input="tokens"`); logits `[batch, num_classes]`.
    LM: `inputs` int `[batch, seq]`; logits `[batch, seq, vocab_size]` (float32).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.embed: nnx.Linear | nnx.Embed
        if config.kind == "classifier" and config.classifier_input == "patches":
            patch_dim = config.patch_size**2 * config.num_channels
            self.embed = dense(patch_dim, config.d_model, ("patch", "embed"), dtype=dtype, rngs=rngs)
            self.position = _positions(config.num_patches, config.d_model, rngs)
        else:
            self.embed = embedding(config.vocab_size, config.d_model, ("vocab", "embed"), dtype=dtype, rngs=rngs)
            if config.kind == "classifier":  # token classifier: no RoPE in its bidirectional blocks
                self.position = _positions(config.max_seq_len, config.d_model, rngs)
        self.blocks = nnx.List([Block(config, index, rngs=rngs) for index in range(config.num_layers)])
        self.final_norm = RMSNorm(config.d_model, eps=config.norm_eps, zero_centered=config.norm_zero_centered)
        out_dim = config.num_classes if config.kind == "classifier" else config.vocab_size
        if not (config.kind == "lm" and config.tie_embeddings):
            self.head = dense(
                config.d_model, out_dim, ("embed", "vocab"), dtype=dtype, use_bias=config.head_bias, rngs=rngs
            )
        if config.exit_layers:
            self.exits = ExitHeads(
                config.d_model, out_dim, config.exit_layers, config.num_layers, dtype=dtype, rngs=rngs
            )

    def _embed(self, inputs):
        cfg = self.config
        if cfg.kind == "lm":
            return self.embed(inputs)
        if cfg.classifier_input == "tokens":
            return self.embed(inputs) + self.position[...][: inputs.shape[1]].astype(self.embed.dtype or jnp.float32)
        batch, height, width, channels = inputs.shape
        p = cfg.patch_size
        patches = inputs.reshape(batch, height // p, p, width // p, p, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, (height // p) * (width // p), p * p * channels)
        return self.embed(patches) + self.position[...].astype(self.embed.dtype or jnp.float32)

    def __call__(
        self,
        inputs,
        *,
        positions=None,
        segment_ids=None,
        return_hidden_states: bool = False,
        return_stats: bool = False,
        head_gates=None,
        skip_budget=None,
        logits: bool = True,
        layer_keep=None,
    ):
        """Forward pass. `return_stats` fills `aux` with per-layer attention-sink statistics, each `[num_layers]`:
        `first_token_share` (mean attention on the first token), `max_activation` (largest |residual| after the
        block) and, for gated layers, `mean_gate`. Multi-exit models return the exit logits in `exits`; models
        with `residual_gates` return their GateSkip gates (per block: attention, then MLP) and the
        `gate_sparsity_loss` in `aux`. `head_gates [num_layers, num_heads]` multiplies each attention head's
        output (causal head gating). `skip_budget` (GateSkip inference, models with `residual_gates`): in every
        branch, the tokens whose mean gate is under that quantile keep their residual unchanged (the branch's
        output is dropped), about that fraction of tokens per branch; a sequence of `num_layers` budgets gives each
        block its own (GateSkip's per-layer token budgets; None entries skip nothing there).
        `layer_keep [batch, num_layers]` (bool): layer dropout (LayerSkip): a row passes through every block whose
        entry is False unchanged (or per token, `[batch, seq, num_layers]`). Models with mixture-of-experts blocks
        always return `moe_load_balancing_loss` and `moe_router_z_loss` (means over the MoE blocks) and
        `moe_tokens_per_expert` (`[num_moe_layers, num_experts]`) in `aux` (`jdistill.nn.moe`)."""
        h = constrain_batch(self._embed(inputs))
        hidden = [h]
        layer_stats = []
        residual_gates = []
        moe_layers: list[dict[str, Any]] = []
        for index, block in enumerate(self.blocks):
            moe_stats: dict[str, Any] | None = {} if self.config.is_moe_layer(index) else None
            stats: dict[str, Any] | None = {} if (return_stats or self.config.residual_gates) else None
            gates = None if head_gates is None else head_gates[index]
            budget = _layer_budget(skip_budget, index, self.config.num_layers)
            if stats is None and gates is None and budget is None and self.config.remat != "none":
                h, moe_stats = _remat_block(block, h, positions, segment_ids, self.config.remat, moe_stats)
            else:
                h = block(
                    h,
                    positions=positions,
                    segment_ids=segment_ids,
                    stats=stats,
                    head_gates=gates,
                    skip_budget=budget,
                    moe_stats=moe_stats,
                )
            if layer_keep is not None:  # [batch, num_layers] per row, or [batch, seq, num_layers] per token
                keep = layer_keep[:, index, None, None] if layer_keep.ndim == 2 else layer_keep[:, :, index, None]
                h = jnp.where(keep, h, hidden[-1])
            h = constrain_batch(h)
            if moe_stats is not None:
                moe_layers.append(moe_stats)
            hidden.append(h)
            if stats is not None:
                residual_gates += stats.pop("residual_gates", [])
            if return_stats and stats is not None:
                layer_stats.append(dict(stats, max_activation=jnp.max(jnp.abs(h.astype(jnp.float32)))))
        exits = self._exits(hidden) if self.config.exit_layers else None
        h = self.final_norm(h)
        if self.config.kind == "classifier":
            h = h.mean(axis=1)
        keys = sorted({key for stats in layer_stats for key in stats})  # DeltaNet layers have no attention stats
        aux: dict[str, Any] = {key: jnp.stack([stats.get(key, jnp.nan) for stats in layer_stats]) for key in keys}
        if residual_gates:
            aux["gate_sparsity_loss"] = gate_sparsity_loss(residual_gates)
            aux["residual_gates"] = tuple(residual_gates)
        if moe_layers:
            aux.update(_moe_aux(moe_layers))
        return ModelOutput(
            logits=self._logits(h) if logits else None,
            exits=exits,
            aux=aux,
            features=h,
            hidden_states=tuple(hidden) if return_hidden_states else None,
        )

    def head_weights(self):
        """(kernel [d_model, out_dim], bias [out_dim] or None) of the output head (the embedding when tied)."""
        if hasattr(self, "head"):
            return self.head.kernel[...], (self.head.bias[...] if self.head.bias is not None else None)
        return self._tied_embedding().embedding[...].T, None

    def _tied_embedding(self) -> nnx.Embed:
        """The token embedding, which is the output head of a model without `head` (a tied LM)."""
        embed = self.embed
        assert isinstance(embed, nnx.Embed), "a model without a head embeds tokens"
        return embed

    def _exits(self, hidden):
        pool = (lambda x: x.mean(axis=1)) if self.config.kind == "classifier" else (lambda x: x)
        return self.exits([pool(hidden[layer]) for layer in self.config.exit_layers])

    def _logits(self, h):
        logits = self.head(h) if hasattr(self, "head") else self._tied_embedding().attend(h)
        return logits.astype(jnp.float32)

    def init_cache(self, batch: int, max_len: int) -> tuple:
        """Empty per-layer decoding state for up to `max_len` positions (LM only): key/value caches for attention
        layers, conv + recurrent states for Gated DeltaNet layers."""
        return tuple(block.init_cache(batch, max_len) for block in self.blocks)

    def decode(self, tokens, *, positions, caches, last_only: bool = False):
        """Incremental LM forward: `tokens [batch, seq]` at `positions [batch, seq]` attend to everything cached
        at earlier or equal positions of their row (Gated DeltaNet layers continue their state: every row must
        advance by the same tokens, as `generate` does). Returns (logits [batch, seq, vocab], new caches);
        with `last_only` the logits of the last position only, `[batch, 1, vocab]` (a prompt's prefill)."""
        h = self.embed(tokens)
        new_caches = []
        for block, cache in zip(self.blocks, caches, strict=True):
            h, cache = block.decode(h, positions=positions, cache=cache)
            new_caches.append(cache)
        if last_only:
            h = h[:, -1:]
        return self._logits(self.final_norm(h)), tuple(new_caches)


def _layer_budget(budgets, index: int, num_layers: int):
    """Block `index`'s GateSkip budget: `budgets` itself when None or one number, else its entry of a sequence of
    `num_layers` budgets (floats or None)."""
    if budgets is None or isinstance(budgets, (int, float)):
        return budgets
    if len(budgets) != num_layers:
        raise ValueError(f"skip_budget: expected one budget per block ({num_layers}), got {len(budgets)}")
    return budgets[index]


REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _remat_block(block, h, positions, segment_ids, remat: str, moe_stats: dict | None):
    """Run `block` under `jax.checkpoint` so its activations are recomputed in the backward pass; returns the
    block's output and its MoE statistics (None for a dense block)."""

    graphdef, state = nnx.split(block)  # functional form: also works on modules merged in an outer trace

    def run(state, h, positions, segment_ids):
        stats: dict[str, Any] | None = None if moe_stats is None else {}
        out = nnx.merge(graphdef, state)(h, positions=positions, segment_ids=segment_ids, moe_stats=stats)
        return out, stats

    return jax.checkpoint(run, policy=REMAT_POLICIES[remat])(state, h, positions, segment_ids)


def _moe_aux(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's MoE aux entries from each MoE block's `MoE` statistics."""
    return {
        "moe_load_balancing_loss": jnp.mean(jnp.stack([s["load_balancing_loss"] for s in layers])),
        "moe_router_z_loss": jnp.mean(jnp.stack([s["router_z_loss"] for s in layers])),
        "moe_tokens_per_expert": jnp.stack([s["tokens_per_expert"] for s in layers]),
    }


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
