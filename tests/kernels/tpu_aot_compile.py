"""Compile the Pallas Mosaic TPU kernels (gated flash attention, gated delta rule) ahead of time for a v5e
topology on a CPU host (libtpu).

Run as a script (the test suite runs it in a subprocess, so libtpu never shares a process with the CPU tests);
prints one JSON line per program: its name and XLA's memory analysis of the compiled TPU executable.
"""

import json
import os
import sys

os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdistill.kernels.delta_rule_pallas import delta_rule_pallas
from jdistill.kernels.pallas_tpu import gated_flash_attention_tpu


def _variants(spec, heads, kv_heads):
    """Other head dims, gates, odd lengths and float32, forward and backward (the kernels must lower for all)."""
    variants = {}
    for q_len, kv_len, head_dim, gate_kind, causal, dtype in [
        (1000, 1000, 64, "elementwise", False, jnp.bfloat16),
        (777, 1031, 256, "none", True, jnp.bfloat16),
        (640, 640, 128, "headwise", True, jnp.float32),
    ]:
        gate = {
            "elementwise": spec(1, q_len, heads, head_dim, dtype=dtype),
            "headwise": spec(1, q_len, heads, dtype=dtype),
            "none": None,
        }[gate_kind]
        args = (
            spec(1, q_len, heads, head_dim, dtype=dtype),
            spec(1, kv_len, kv_heads, head_dim, dtype=dtype),
            spec(1, kv_len, kv_heads, head_dim, dtype=dtype),
            gate,
        )

        def forward(q, k, v, gate, causal=causal):
            return gated_flash_attention_tpu(q, k, v, gate, causal=causal)

        backward = jax.grad(lambda *a, f=forward: jnp.sum(f(*a).astype(jnp.float32)), argnums=(0, 1, 2))
        name = f"variant_{q_len}x{kv_len}_d{head_dim}_{gate_kind}_{'causal' if causal else 'full'}"
        variants[name + "_forward"] = (forward, args)
        variants[name + "_backward"] = (backward, args)
    return variants


def main(seq=2048, head_dim=128, heads=8, kv_heads=2):
    topology = topologies.get_topology_desc(
        platform="tpu",
        topology_name="v5e:2x2",
        chip_config_name="default",
        chips_per_host_bounds=(2, 2, 1),
        num_slices=1,
    )
    mesh = Mesh(np.array(topology.devices[:1]), ("x",))
    replicated = NamedSharding(mesh, PartitionSpec())

    def spec(*shape, dtype=jnp.bfloat16):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)

    q, kv = spec(1, seq, heads, head_dim), spec(1, seq, kv_heads, head_dim)
    gate, segments = spec(1, seq, heads), spec(1, seq, dtype=jnp.int32)

    def forward(q, k, v, gate, segment_ids):
        return gated_flash_attention_tpu(q, k, v, gate, causal=True, segment_ids=segment_ids)

    def loss(*args):
        return jnp.sum(forward(*args).astype(jnp.float32))

    def delta_rule(q, k, v, g, beta):
        return delta_rule_pallas(q, k, v, g, beta, backend="tpu")[0]

    def delta_rule_loss(*args):
        return jnp.sum(delta_rule(*args).astype(jnp.float32))

    attention_args = (q, kv, kv, gate, segments)
    qk, decay = spec(1, seq, heads, head_dim), spec(1, seq, heads, dtype=jnp.float32)
    delta_args = (qk, qk, qk, decay, decay)
    programs = {
        "forward": (forward, attention_args),
        "backward": (jax.grad(loss, argnums=(0, 1, 2, 3)), attention_args),
        "delta_rule_forward": (delta_rule, delta_args),
        "delta_rule_backward": (jax.grad(delta_rule_loss, argnums=(0, 1, 2, 3, 4)), delta_args),
    }
    programs.update(_variants(spec, heads, kv_heads))
    for name, (program, args) in programs.items():
        compiled = jax.jit(program).lower(*args).compile()
        memory = compiled.memory_analysis()
        kernels = sorted(
            {
                line.split("=")[0].strip().lstrip("%")
                for line in compiled.as_text().splitlines()
                if "custom-call" in line and "gated_" in line.split("=")[0]
            }
        )
        print(
            json.dumps(
                {
                    "program": name,
                    "platform": topology.devices[0].platform,
                    "kernels": kernels,
                    "temp_bytes": memory.temp_size_in_bytes,
                    "argument_bytes": memory.argument_size_in_bytes,
                    "output_bytes": memory.output_size_in_bytes,
                    "code_bytes": memory.generated_code_size_in_bytes,
                }
            )
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
