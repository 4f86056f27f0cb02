"""`jdistill bench train-step`: the CLI runs without torch and writes its figures; the PyTorch reference computes
the same KD loss (and gradients) as jdistill's recipe for the same weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdistill.bench.train_step import TEMPERATURE, bench_configs, make_batch
from jdistill.cli import main
from jdistill.models import Transformer
from jdistill.recipes import KnowledgeDistillation, Supervised

KEYS = (
    "jdistill_steps_per_s",
    "jdistill_ce_steps_per_s",
    "teacher_forward_per_s",
    "teacher_overhead",
    "teacher_forward_fraction",
    "jax_kd_memory_bytes",
)
TINY = dict(d_model=32, num_heads=4, mlp_dim=128, teacher_layers=2, student_layers=1)


def test_cli_without_torch_writes_figures_trace_and_op_table(tmp_path, capsys):
    path, profile = tmp_path / "bench.json", tmp_path / "prof"
    assert (
        main(
            [
                "bench",
                "train-step",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--batch",
                "2",
                "--seq",
                "16",
                "--no-torch",
                "--json",
                str(path),
                "--profile",
                str(profile),
            ]
        )
        == 0
    )
    results = json.loads(path.read_text())
    for key in KEYS:
        assert results[key] > 0, key
    assert "pytorch_steps_per_s" not in results
    assert (results["batch"], results["seq"]) == (2, 16)
    printed = capsys.readouterr()
    assert "teacher_overhead" in printed.out
    assert "compiling the JAX steps" in printed.err and "9/9" in printed.err  # progress: 3 contenders x (1 + 2) calls
    assert list(profile.rglob("*.xplane.pb"))
    rows = json.loads((profile / "kd_step_ops.json").read_text())
    assert rows and all(row["ms_per_step"] >= 0 for row in rows)
    assert any(row["kind"].startswith(("fusion", "dot", "custom-call")) for row in rows)


def _jax_loss_and_grads(recipe, student, teacher, batch):
    graphdef, params = nnx.split(student)

    def loss_fn(params):
        (total, count), _, _ = _as_pair(recipe.loss(nnx.merge(graphdef, params), teacher, (), batch, None))
        return total / count

    return jax.value_and_grad(loss_fn)(params)


def _as_pair(out):
    loss, metrics, state = out
    return (loss if isinstance(loss, tuple) else (loss, jnp.ones(()))), metrics, state


@pytest.mark.parametrize("with_teacher", [True, False])
def test_torch_reference_computes_the_same_loss_and_gradients(with_teacher):
    torch = pytest.importorskip("torch")
    from jdistill.bench import torch_reference as ref

    teacher_config, student_config = bench_configs(12, **TINY)
    teacher = Transformer(teacher_config, rngs=nnx.Rngs(0))
    student = Transformer(student_config, rngs=nnx.Rngs(1))
    # non-trivial gate and norm weights, so a wrong gate or norm layout cannot pass
    for module in (teacher, student):
        for block in module.blocks:
            block.attention_norm.scale[...] = 1.0 + 0.1 * jnp.arange(32, dtype=jnp.float32) / 32
    data = make_batch(3, 12, seed=1)
    batch = {key: jnp.asarray(value) for key, value in data.items()}
    recipe = KnowledgeDistillation(temperature=TEMPERATURE) if with_teacher else Supervised()
    loss, grads = _jax_loss_and_grads(recipe, student, teacher if with_teacher else None, batch)

    torch_teacher = ref.TorchLM(teacher_config)
    torch_student = ref.TorchLM(student_config)
    ref.load_jdistill_weights(torch_teacher, nnx.state(teacher))
    ref.load_jdistill_weights(torch_student, nnx.state(student))
    trainer = ref.TorchTrainer(
        torch_student, _train_config(), teacher=torch_teacher if with_teacher else None, temperature=TEMPERATURE
    )
    inputs, targets = torch.from_numpy(data["inputs"]).long(), torch.from_numpy(data["targets"]).long()
    np.testing.assert_allclose(
        torch_teacher(inputs).detach().numpy(), teacher(batch["inputs"]).logits, rtol=2e-4, atol=2e-5
    )
    torch_loss = trainer.loss(inputs, targets)
    torch_loss.backward()
    np.testing.assert_allclose(float(torch_loss.detach()), float(loss), rtol=2e-5)
    block = grads["blocks"][0]
    np.testing.assert_allclose(
        torch_student.blocks[0].attention.query_and_gate.weight.grad.numpy().T,
        block["attention"]["query_and_gate"]["kernel"][...],
        rtol=2e-3,
        atol=2e-6,
    )
    np.testing.assert_allclose(
        torch_student.blocks[0].up.bias.grad.numpy(), block["mlp"]["up"]["bias"][...], rtol=2e-3, atol=2e-6
    )
    np.testing.assert_allclose(
        torch_student.embed.weight.grad.numpy(), grads["embed"]["embedding"][...], rtol=2e-3, atol=2e-6
    )


def _train_config():
    from jdistill.bench.train_step import bench_train_config

    return bench_train_config(3)


def test_torch_schedule_matches_optax():
    pytest.importorskip("torch")
    from jdistill.bench.torch_reference import warmup_cosine
    from jdistill.configs.schema import TrainConfig
    from jdistill.train.optim import learning_rate_schedule

    config = TrainConfig(steps=50, warmup_steps=10, learning_rate=3e-3, final_lr_fraction=0.1)
    schedule = learning_rate_schedule(config)
    for step in (0, 5, 10, 27, 50, 60):
        np.testing.assert_allclose(warmup_cosine(step, config), float(schedule(step)), rtol=1e-5)
