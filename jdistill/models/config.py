"""Model configuration: one frozen dataclass drives every transformer jdistill builds."""

from __future__ import annotations

import dataclasses
from typing import Literal

DType = Literal["float32", "bfloat16"]  # a model's parameter and compute dtype
MOE_ZERO = {"num_experts": "dense MLPs only", "moe_mlp_dim": "mlp_dim", "shared_expert_dim": "no shared expert"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A gated transformer: an encoder classifier over image patches, or a decoder LM over tokens.

    Attributes:
      kind: "classifier" (bidirectional encoder, pooled head) or "lm" (causal decoder, per-token head).
      num_layers, d_model, num_heads, mlp_dim: the usual sizes; head_dim defaults to d_model // num_heads.
      num_kv_heads: key/value heads for grouped-query attention (None: equal to num_heads).
      gate: SDPA output gate (docs/methods.md#gated-attention): "none", "headwise" (one scalar per head) or
        "elementwise" (one per channel).
      gate_position: "sdpa_output" (G1, after attention; the default) or "value" (G2, on the values).
      activation: MLP activation (`jdistill.nn.activations`): gelu (tanh form), gelu_exact, silu, atlu, golu, or
        the expanded-range xgelu / xsilu / xatlu with a trainable alpha per MLP block (initialised 0).
      mlp: "dense" (W_out act(W_in x)) or "glu" (`jdistill.nn.mlp.GLUMLP`; order 2 with silu is the
        SwiGLU of Llama and Qwen, W_down(silu(W_gate x) * W_up x); order 1 is g(x W_gate) * (x W_up)).
      mlp_bias: biases in the MLP projections (Llama/Qwen use none).
      qk_norm: per-head RMSNorm of queries and keys before RoPE (Qwen3).
      rotary_fraction: fraction of each head's dimensions that RoPE rotates (partial rotary; 1 = all).
      norm_eps: epsilon of every RMSNorm.
      sliding_window: attend only to the `sliding_window` nearest positions (None: full attention).
      patch_size, image_size, num_channels, num_classes, pooling: classifier input and head.
      classifier_input: "patches" (images `[batch, height, width, channels]`) or "tokens" (ids `[batch, seq]`,
        vocab_size and max_seq_len apply; learned positions) for the encoder classifier.
      vocab_size, max_seq_len, rope_theta, tie_embeddings: LM input and head.
      rope_scaling: Llama 3 RoPE frequency scaling (factor, low_freq_factor, high_freq_factor,
        original_max_position_embeddings), as Llama 3.1 / 3.2 checkpoints declare it (`jdistill.nn.rope`); () none.
      head_bias: a bias in the output head (Llama / Qwen3 checkpoints have none: `jdistill.hf` sets false).
      layer_pattern: token mixer per block, cycled over the layers: "A" full (gated) attention, "D" Gated DeltaNet
        (docs/methods.md#gated-deltanet), "R" ReGLA (item 24); e.g. "DDDA" is Qwen3-Next's 3 linear : 1 full hybrid.
      linear_key_heads, linear_value_heads, linear_key_head_dim, linear_value_head_dim, linear_conv_kernel,
        delta_rule_impl: the Gated DeltaNet layers (`jdistill.nn.deltanet`).
      norm_zero_centered: RMSNorm weights stored as w - 1 and applied as (1 + w) (Qwen3-Next).
      residual_gates: GateSkip residual gates on every attention and MLP branch (docs/methods.md#gateskip).
      exit_layers: 1-based blocks with an early exit (shared exit head,
      docs/methods.md#multi-exit-self-distillation); () for none.
      num_experts: experts of the mixture-of-experts layers (`jdistill.nn.moe.MoE`, docs/moe.md); 0 = a dense
        MLP in every block.
      experts_per_token: experts each token is routed to (top-k), in [1, num_experts].
      moe_mlp_dim: hidden size of each expert (0: mlp_dim); the dense MLPs of a MoE model keep mlp_dim.
      shared_expert_dim: hidden size of the shared SwiGLU expert with a sigmoid gate (Qwen3-Next); 0 = none.
      norm_topk_prob: renormalise the k routing weights to sum to 1 (otherwise the raw softmax probabilities).
      moe_every: block i (0-based) is a MoE block when (i + 1) % moe_every == 0 (HF `decoder_sparse_step`) ...
      dense_layers: ... and i is not listed here (0-based; HF `mlp_only_layers`).
      moe_dispatch: "ragged" (sort by expert, grouped matmuls; dropless) or "one_hot" (every expert on every
        token, the reference; E times the work).
      attention_impl: passed to `jdistill.kernels.gated_attention` ("auto", "xla", ...).
      dtype: compute dtype ("float32" or "bfloat16"); parameters stay float32.
      remat: rematerialisation of each block in the backward pass: "none" (keep activations), "full" (recompute
        the block) or "dots" (save matmul outputs without batch dimensions, recompute the rest).
    """

    kind: Literal["classifier", "lm"] = "classifier"
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    num_kv_heads: int | None = None
    head_dim: int | None = None
    mlp_dim: int = 128
    gate: Literal["none", "headwise", "elementwise"] = "headwise"
    gate_position: Literal["sdpa_output", "value"] = "sdpa_output"
    activation: Literal["gelu", "gelu_exact", "silu", "atlu", "golu", "xgelu", "xsilu", "xatlu"] = "gelu"
    mlp: Literal["dense", "glu"] = "dense"
    glu_order: Literal[1, 2] = 2
    mlp_bias: bool = True
    qk_norm: bool = False
    rotary_fraction: float = 1.0
    norm_eps: float = 1e-6
    sliding_window: int | None = None
    patch_size: int = 2
    image_size: int = 8
    num_channels: int = 1
    num_classes: int = 10
    pooling: Literal["mean"] = "mean"  # the only pooling the classifier implements (it has no class token)
    classifier_input: Literal["patches", "tokens"] = "patches"
    vocab_size: int = 256
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rope_scaling: tuple[float, ...] = ()
    tie_embeddings: bool = False
    head_bias: bool = True
    layer_pattern: str = "A"
    linear_key_heads: int = 2
    linear_value_heads: int = 4
    linear_key_head_dim: int = 16
    linear_value_head_dim: int = 16
    linear_conv_kernel: int = 4
    delta_rule_impl: str = "auto"
    norm_zero_centered: bool = False
    residual_gates: bool = False
    exit_layers: tuple[int, ...] = ()
    num_experts: int = 0
    experts_per_token: int = 2
    moe_mlp_dim: int = 0
    shared_expert_dim: int = 0
    norm_topk_prob: bool = True
    moe_every: int = 1
    dense_layers: tuple[int, ...] = ()
    moe_dispatch: Literal["ragged", "one_hot"] = "ragged"
    attention_impl: str = "auto"
    dtype: DType = "float32"
    remat: Literal["none", "full", "dots"] = "none"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // max(self.num_heads, 1)  # num_heads < 1 is a validate() problem

    @property
    def resolved_kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def layer_type(self, index: int) -> str:
        """ "attention" or "deltanet" for block `index` (0-based)."""
        return {"A": "attention", "D": "deltanet", "R": "regla"}[self.layer_pattern[index % len(self.layer_pattern)]]

    def is_moe_layer(self, index: int) -> bool:
        """Whether block `index` (0-based) has the mixture-of-experts MLP (the HF Qwen3-MoE rule)."""
        return self.num_experts > 0 and index not in self.dense_layers and (index + 1) % self.moe_every == 0

    @property
    def resolved_moe_mlp_dim(self) -> int:
        return self.moe_mlp_dim or self.mlp_dim

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    @property
    def rotary_dim(self) -> int:
        return int(self.resolved_head_dim * self.rotary_fraction)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> list[tuple[str, str]]:
        """Problems as (field, what was expected); empty when the config is consistent."""
        problems = []
        for name in (
            "num_layers",
            "d_model",
            "num_heads",
            "mlp_dim",
            "patch_size",
            "image_size",
            "num_channels",
            "num_classes",
            "vocab_size",
            "max_seq_len",
            "linear_key_heads",
            "linear_value_heads",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_conv_kernel",
        ):
            if getattr(self, name) < 1:
                problems.append((name, "a positive integer"))
        for name in ("num_kv_heads", "head_dim"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append((name, "a positive integer or null"))
        if self.head_dim is None and self.num_heads >= 1 and self.d_model % self.num_heads:
            problems.append(("num_heads", f"a divisor of d_model={self.d_model} (or set head_dim)"))
        if self.num_kv_heads is not None and self.num_heads % max(self.num_kv_heads, 1):
            problems.append(("num_kv_heads", f"a divisor of num_heads={self.num_heads}"))
        if not 0.0 <= self.rotary_fraction <= 1.0 or int(self.resolved_head_dim * self.rotary_fraction) % 2:
            problems.append(("rotary_fraction", "a fraction in [0, 1] giving an even number of rotary dimensions"))
        if any(not 1 <= layer <= self.num_layers for layer in self.exit_layers) or list(self.exit_layers) != sorted(
            set(self.exit_layers)
        ):
            problems.append(("exit_layers", f"increasing block numbers in [1, num_layers={self.num_layers}]"))
        if not self.layer_pattern or set(self.layer_pattern) - {"A", "D", "R"}:
            problems.append(
                ("layer_pattern", 'a non-empty string of "A" (attention), "D" (Gated DeltaNet) and "R" (ReGLA)')
            )
        elif set(self.layer_pattern) - {"A"} and self.kind != "lm":
            problems.append(("layer_pattern", 'only "A" for classifiers (the linear mixers are causal)'))
        if self.linear_key_heads >= 1 and self.linear_value_heads % self.linear_key_heads:
            problems.append(("linear_value_heads", f"a multiple of linear_key_heads={self.linear_key_heads}"))
        if self.sliding_window is not None and self.sliding_window < 1:
            problems.append(("sliding_window", "a positive integer or null"))
        if self.norm_eps <= 0:
            problems.append(("norm_eps", "a positive number"))
        if self.rope_scaling and (
            len(self.rope_scaling) != 4 or min(self.rope_scaling) <= 0 or self.rope_scaling[1] >= self.rope_scaling[2]
        ):
            problems.append(
                (
                    "rope_scaling",
                    "[] or [factor, low_freq_factor, high_freq_factor, original_max_position_embeddings], "
                    "positive, low_freq_factor < high_freq_factor",
                )
            )
        if (
            self.kind == "classifier"
            and self.classifier_input == "patches"
            and self.patch_size >= 1
            and self.image_size % self.patch_size
        ):
            problems.append(("patch_size", f"a divisor of image_size={self.image_size}"))
        problems += self._moe_problems()
        problems += self._kernel_problems()
        return problems

    def _moe_problems(self) -> list[tuple[str, str]]:
        """The mixture-of-experts fields (all ignored while num_experts is 0, except their own types)."""
        problems = []
        for name in ("num_experts", "moe_mlp_dim", "shared_expert_dim"):
            if getattr(self, name) < 0:
                problems.append((name, "a non-negative integer (0: " + MOE_ZERO[name] + ")"))
        if self.moe_every < 1:
            problems.append(("moe_every", "a positive integer"))
        if self.moe_dispatch not in ("ragged", "one_hot"):
            problems.append(("moe_dispatch", '"ragged" or "one_hot"'))
        if self.num_experts < 1:
            return problems
        if not 1 <= self.experts_per_token <= self.num_experts:
            problems.append(("experts_per_token", f"an integer in [1, num_experts={self.num_experts}]"))
        if any(not 0 <= layer < self.num_layers for layer in self.dense_layers) or list(self.dense_layers) != sorted(
            set(self.dense_layers)
        ):
            problems.append(("dense_layers", f"increasing 0-based block numbers below num_layers={self.num_layers}"))
        if self.mlp != "glu" or self.glu_order != 2 or self.activation != "silu" or self.mlp_bias:
            problems.append(("mlp", "mlp: glu, glu_order: 2, activation: silu, mlp_bias: false (SwiGLU experts)"))
        return problems

    def _kernel_problems(self) -> list[tuple[str, str]]:
        """An explicit attention / delta-rule implementation that cannot run this model (head dim, dtype, window)."""
        from jdistill.kernels import attention_impl_problem, delta_rule_impl_problem  # jax: imported when needed

        problems = []
        if "A" in self.layer_pattern and self.resolved_head_dim >= 1:
            wrong = attention_impl_problem(
                self.attention_impl, head_dim=self.resolved_head_dim, dtype=self.dtype, window=self.sliding_window
            )
            problems += [("attention_impl", wrong)] if wrong else []
        if "D" in self.layer_pattern:
            wrong = delta_rule_impl_problem(
                self.delta_rule_impl, key_dim=self.linear_key_head_dim, value_dim=self.linear_value_head_dim
            )
            problems += [("delta_rule_impl", wrong)] if wrong else []
        return problems
