"""Run with 8 simulated CPU devices: per-device temporaries of the chunked KD loss (value and gradient) with the
batch split over the devices, and on one device. Prints one JSON line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jdistill.losses.chunked import chunked_distillation_loss

BATCH, SEQ, D_STUDENT, D_TEACHER, VOCAB, CHUNK = 8, 256, 32, 48, 16384, 512


def loss(student_hidden, student_head, teacher_hidden, teacher_head):
    return chunked_distillation_loss(
        student_hidden, student_head, teacher_hidden, teacher_head, temperature=2.0, chunk_size=CHUNK
    )


def temp_bytes(devices):
    mesh = Mesh(np.array(devices), ("batch",))
    rows, whole = NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(mesh, PartitionSpec())
    spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    args = (spec(BATCH, SEQ, D_STUDENT), spec(D_STUDENT, VOCAB), spec(BATCH, SEQ, D_TEACHER), spec(D_TEACHER, VOCAB))
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), in_shardings=(rows, whole, rows, whole))
    return step.lower(*args).compile().memory_analysis().temp_size_in_bytes


print(
    json.dumps(
        {"devices": len(jax.devices()), "sharded": temp_bytes(jax.devices()), "single": temp_bytes(jax.devices()[:1])}
    )
)
