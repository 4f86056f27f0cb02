"""`jdistill bench llm-kd`: GKD training steps of jdistill against Hugging Face TRL on the same tiny Qwen3.

Models: a Qwen3-architecture teacher (4 layers) and student (2 layers), d_model 256, 4 query / 2 key-value heads
of 64, SwiGLU 768, qk-norm, untied head, vocabulary 8192, random weights: jdistill initialises them, writes them
with `jdistill.hf.save_pretrained`, and transformers loads the same files (`Qwen3ForCausalLM`, float32, sdpa
attention). Batch: 8 prompts of 192 tokens and completions of 64 (sequences of 256), random ids, EOS id 1 never
in the data.

Contenders, each the library's own training path, fp32, the same optimizer (AdamW, lr 1e-4, betas 0.9/0.999,
eps 1e-8, no weight decay, constant schedule, gradient clipping at norm 1) and the same loss (generalized JSD,
beta 0.5, T = 1, on completion tokens):
  - off-policy (the dataset completion): jdistill's `gkd` recipe with lam = 0 vs TRL's GKD trainer
    (`trl.experimental.gkd.GKDTrainer`, or `trl.GKDTrainer` in older releases) with lmbda = 0;
  - on-policy (64 tokens sampled from the student at temperature 1 every step, stopping at EOS): `gkd` with
    lam = 1 vs the faster of `GKDTrainer` with lmbda = 1 and `trl.DistillationTrainer` (if installed).
TRL runs with gradient checkpointing and bf16 off (its defaults turn both on; off is its fastest fp32 setting).

Timing: TRL's own `Trainer.train()` loop runs; a callback times each of its optimizer steps (from `on_step_begin`
to `on_step_end`: generation, forward, backward, clipping, optimizer; not data loading or logging) and runs one
jdistill step per TRL step, alternately just before and just after it, so load from other processes hits both
alike. The first `warmup` steps of each (compilation, allocator warm-up) are not timed; a contender's time is the
median of its timed steps. torch uses as many threads as the cores this process may run on, which XLA's CPU
backend uses too. The step-0 losses of both off-policy sides are recorded: same weights and batch, so they agree
to float32 rounding.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jdistill.bench.train_step import JaxStep, available_cores
from jdistill.configs.schema import TrainConfig
from jdistill.extras import require
from jdistill.hf import save_pretrained
from jdistill.io import strict_json
from jdistill.models import ModelConfig, Transformer
from jdistill.recipes.gkd import GKD

PAD_ID, EOS_ID = 0, 1


@dataclasses.dataclass(frozen=True)
class Settings:
    vocab_size: int = 8192
    d_model: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 768
    teacher_layers: int = 4
    student_layers: int = 2
    batch: int = 8
    prompt_len: int = 192
    completion_len: int = 64
    learning_rate: float = 1e-4
    beta: float = 0.5
    temperature: float = 1.0

    def model_config(self, layers: int) -> ModelConfig:
        """The Qwen3-style `ModelConfig` with `layers` blocks (what `jdistill.hf` exports as Qwen3ForCausalLM)."""
        return ModelConfig(
            kind="lm",
            num_layers=layers,
            d_model=self.d_model,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            mlp_dim=self.mlp_dim,
            mlp="glu",
            activation="silu",
            mlp_bias=False,
            gate="none",
            qk_norm=True,
            vocab_size=self.vocab_size,
            max_seq_len=self.prompt_len + self.completion_len,
            rope_theta=1e6,
            norm_eps=1e-6,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=100_000,
            batch_size=self.batch,
            learning_rate=self.learning_rate,
            warmup_steps=0,
            final_lr_fraction=1.0,
            weight_decay=0.0,
            grad_clip_norm=1.0,
        )

    def recipe(self, lam: float) -> GKD:
        return GKD(
            lam=lam,
            beta=self.beta,
            temperature=self.temperature,
            sample_temperature=self.temperature,
            max_new_tokens=self.completion_len,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
        )


def make_data(settings: Settings, seed: int = 0) -> dict[str, np.ndarray]:
    """Prompts and completions of random ids in [2, vocab): neither padding nor EOS occurs."""
    rng = np.random.default_rng(seed)
    b, p, c = settings.batch, settings.prompt_len, settings.completion_len
    return {
        "prompt": rng.integers(2, settings.vocab_size, (b, p)).astype(np.int32),
        "prompt_mask": np.ones((b, p), bool),
        "completion": rng.integers(2, settings.vocab_size, (b, c)).astype(np.int32),
        "completion_mask": np.ones((b, c), bool),
    }


def export_models(settings: Settings, directory: Path) -> tuple[Transformer, ModelConfig]:
    """Write the teacher (seed 0) and the student's initial weights (seed 1, as `JaxStep` makes it) as HF
    checkpoints under `directory`; returns the jdistill teacher and the student's config."""
    teacher = Transformer(settings.model_config(settings.teacher_layers), rngs=nnx.Rngs(0))
    student_config = settings.model_config(settings.student_layers)
    save_pretrained(teacher, directory / "teacher")
    save_pretrained(Transformer(student_config, rngs=nnx.Rngs(1)), directory / "student")
    return teacher, student_config


def hf_tokenizer(settings: Settings):
    """A word-level tokenizer whose ids are the benchmark's token ids ("t5" -> 5), for TRL's text interfaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID} | {f"t{i}": i for i in range(2, settings.vocab_size)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.padding_side = "left"
    return tokenizer


def _load_hf(directory: Path):
    import torch
    from transformers import Qwen3ForCausalLM

    model = Qwen3ForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="sdpa")
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    return model


class Interleave:
    """A transformers `TrainerCallback` that times each TRL optimizer step and runs one jdistill step per TRL step,
    alternately before and after it."""

    def __init__(self, jax_step, warmup: int):
        self.jax_step, self.warmup = jax_step, warmup
        self.trl: list[float] = []
        self.jdistill: list[float] = []
        self.losses: list[float] = []
        self.jax_losses: list[float] = []
        self.generated: list[float] = []
        self._round = 0
        self._start = 0.0

    def _run_jax(self):
        start = time.perf_counter()
        metrics = self.jax_step()
        elapsed = time.perf_counter() - start
        if self._round >= self.warmup:
            self.jdistill.append(elapsed)
        self.jax_losses.append(float(metrics["loss"]))
        self.generated.append(float(metrics["generated_tokens"]))

    def on_step_begin(self, args, state, control, **kwargs):
        if self._round % 2:
            self._run_jax()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self._start
        if self._round >= self.warmup:
            self.trl.append(elapsed)
        if not self._round % 2:
            self._run_jax()
        self._round += 1

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))

    # the other TrainerCallback events
    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def _training_arguments(settings: Settings, steps: int, output_dir: str) -> dict[str, Any]:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=settings.batch,
        max_steps=steps,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def gkd_trainer_class():
    """TRL's GKD trainer: `trl.experimental.gkd.GKDTrainer` (recent releases) or `trl.GKDTrainer` (older)."""
    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError:
        from trl import GKDConfig, GKDTrainer  # type: ignore[attr-defined, no-redef]
    return GKDTrainer, GKDConfig


def _gkd_collator(prompt_len: int):
    import torch

    def collate(examples):
        prompts = torch.tensor([example["prompt_ids"] for example in examples])
        completions = torch.tensor([example["completion_ids"] for example in examples])
        input_ids = torch.cat([prompts, completions], dim=1)
        labels = input_ids.clone()
        labels[:, :prompt_len] = -100
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "labels": labels,
            "prompts": prompts,
            "prompt_attention_mask": torch.ones_like(prompts),
        }

    return collate


def trl_gkd(settings: Settings, data: dict, directory: Path, lmbda: float, steps: int, callback):
    """TRL's GKD trainer on the exported checkpoints; returns it, ready to `train()`."""
    from datasets import Dataset

    trainer_class, config_class = gkd_trainer_class()
    dataset = Dataset.from_dict({"prompt_ids": data["prompt"].tolist(), "completion_ids": data["completion"].tolist()})
    args = config_class(
        **_training_arguments(settings, steps, str(directory / "trl_out")),
        lmbda=lmbda,
        beta=settings.beta,
        temperature=settings.temperature,
        max_new_tokens=settings.completion_len,
        seq_kd=False,
    )
    return trainer_class(
        model=_load_hf(directory / "student"),
        teacher_model=_load_hf(directory / "teacher"),
        args=args,
        data_collator=_gkd_collator(settings.prompt_len),
        train_dataset=dataset,
        processing_class=hf_tokenizer(settings),
        callbacks=[callback],
    )


def trl_distillation(settings: Settings, data: dict, directory: Path, steps: int, callback):
    """TRL's `DistillationTrainer` (on-policy) on the exported checkpoints, or None when trl has none."""
    try:
        from trl import DistillationConfig, DistillationTrainer
    except ImportError:
        return None
    from datasets import Dataset

    prompts = [" ".join(f"t{i}" for i in row) for row in data["prompt"]]
    args = DistillationConfig(
        **_training_arguments(settings, steps, str(directory / "trl_distill_out")),
        beta=settings.beta,
        temperature=settings.temperature,
        max_completion_length=settings.completion_len,
        top_k=0,
        top_p=1.0,
    )
    return DistillationTrainer(
        model=_load_hf(directory / "student"),
        teacher_model=_load_hf(directory / "teacher"),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=hf_tokenizer(settings),
        callbacks=[callback],
    )


def _median_rate(seconds: list[float]) -> float:
    return 1.0 / statistics.median(seconds)


def _phase(name: str, trainer, callback: Interleave, results: dict) -> None:
    """Train, then record both sides' steps/s (and the step-0 losses)."""
    trainer.train()
    results[f"{name}_trl_steps_per_s"] = _median_rate(callback.trl)
    results[f"{name}_jdistill_steps_per_s"] = _median_rate(callback.jdistill)
    results[f"{name}_trl_first_loss"] = callback.losses[0] if callback.losses else None
    results[f"{name}_jdistill_first_loss"] = callback.jax_losses[0]
    results[f"{name}_jdistill_generated_tokens_per_step"] = statistics.mean(callback.generated)
    print(
        f"  {name:<22} jdistill {results[f'{name}_jdistill_steps_per_s']:6.3f} steps/s   "
        f"TRL {results[f'{name}_trl_steps_per_s']:6.3f} steps/s",
        flush=True,
    )


def run(*, steps: int = 10, warmup: int = 2, only: str = "both", settings: Settings | None = None) -> dict:
    """Time every contender (see the module docstring); returns the figures."""
    import torch
    import transformers
    import trl

    settings = settings or Settings()
    cores = available_cores()
    torch.set_num_threads(cores)
    data = make_data(settings)
    results: dict[str, Any] = {
        "settings": dataclasses.asdict(settings),
        "steps": steps,
        "warmup": warmup,
        "cpu_count": cores,
        "torch_threads": torch.get_num_threads(),
        "backend": jax.default_backend(),
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "load_average_before": list(os.getloadavg()),
    }
    total = warmup + steps
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        teacher, student_config = export_models(settings, directory)
        train_config = settings.train_config()

        def jax_step(lam: float) -> JaxStep:
            return JaxStep(student_config, settings.recipe(lam), train_config, data, teacher)

        shape = f"{settings.batch} x ({settings.prompt_len} + {settings.completion_len})"
        print(f"llm-kd: batch {shape} tokens, {cores} cores", flush=True)
        if only in ("off", "both"):
            callback = Interleave(jax_step(0.0), warmup)
            _phase("offpolicy_gkd", trl_gkd(settings, data, directory, 0.0, total, callback), callback, results)
        if only in ("on", "both"):
            on_policy = jax_step(1.0)  # compiled once, trained on through both phases
            for name in ("onpolicy_gkd", "onpolicy_distillation"):
                callback = Interleave(on_policy, warmup)
                if name == "onpolicy_gkd":
                    trainer = trl_gkd(settings, data, directory, 1.0, total, callback)
                else:
                    trainer = trl_distillation(settings, data, directory, total, callback)
                if trainer is not None:
                    _phase(name, trainer, callback, results)
    results["load_average_after"] = list(os.getloadavg())
    summarize(results)
    return results


def summarize(results: dict) -> None:
    """The headline keys: speedups against GKDTrainer off-policy and against the faster on-policy TRL trainer
    (each against the jdistill steps interleaved with it)."""
    if "offpolicy_gkd_trl_steps_per_s" in results:
        results["jdistill_steps_per_s"] = results["offpolicy_gkd_jdistill_steps_per_s"]
        results["trl_steps_per_s"] = results["offpolicy_gkd_trl_steps_per_s"]
        results["speedup"] = results["jdistill_steps_per_s"] / results["trl_steps_per_s"]
        # the same weights and batch on both sides: the losses of step 0 agree to float32 rounding
        results["offpolicy_step0_loss_jdistill"] = results["offpolicy_gkd_jdistill_first_loss"]
        results["offpolicy_step0_loss_trl"] = results["offpolicy_gkd_trl_first_loss"]
    phases = [name for name in ("onpolicy_gkd", "onpolicy_distillation") if f"{name}_trl_steps_per_s" in results]
    if phases:
        fastest = max(phases, key=lambda name: results[f"{name}_trl_steps_per_s"])
        results["onpolicy_trl_trainer"] = {
            "onpolicy_gkd": "GKDTrainer",
            "onpolicy_distillation": "DistillationTrainer",
        }[fastest]
        results["onpolicy_jdistill_steps_per_s"] = results[f"{fastest}_jdistill_steps_per_s"]
        results["onpolicy_trl_steps_per_s"] = results[f"{fastest}_trl_steps_per_s"]
        results["onpolicy_speedup"] = results["onpolicy_jdistill_steps_per_s"] / results["onpolicy_trl_steps_per_s"]
    for key in ("speedup", "onpolicy_speedup"):
        if key in results:
            print(f"  {key}: {results[key]:.2f}x")


def run_llm_kd(args) -> int:
    """The CLI entry point (`jdistill bench llm-kd`)."""
    for module in ("torch", "transformers", "trl"):  # TRL's trainers are what jdistill is timed against
        require(module, "bench", "`jdistill bench llm-kd`")
    results = run(steps=args.steps, warmup=args.warmup, only=args.only)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(strict_json.dumps(results, indent=1) + "\n")
        os.replace(tmp, path)
    return 0
