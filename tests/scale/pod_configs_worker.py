"""Each pod config's own pipeline, scaled down, for 3 real steps on 8 simulated CPU devices (run as a subprocess by
test_pod_configs_train.py; one JSON line per config on stdout).

    python tests/scale/pod_configs_worker.py WORK_DIR NAME [NAME ...]

For a config tpu_configs/NAME.yaml: a byte-level BPE tokenizer trained here on the embedded corpus stands in for the
checkpoint's tokenizer.json (Qwen-like: 301 ids in 320 embedding rows, padded as Qwen3's 151669 in 151936;
Llama-like: 320 ids in 320 rows, as Llama 3's 128256); the teacher's and the student's HF folders are tiny
random checkpoints of the config's own architectures written by `jdistill.hf.save_pretrained` with that tokenizer;
the data is the embedded corpus (a slice of `pystdlib_text`, as `files:` jsonl) tokenised by
`jdistill.data.tokenized.tokenize_source` (what `jdistill tokenize` runs) into `tokenized:DIR`. The config keeps its
recipe, objective, weights, distill.vocab, vocab_chunk (scaled with the sequence), grad accumulation, sequences per
device, mesh axes (scaled to 8 devices, `MESHES`), dtype, remat, attention implementation, qk-norm, tied
embeddings and GQA ratio; width, depth and sequence length shrink. Then `jdistill.train.run_job` runs it with its
`run.export`, and the exported student is loaded back with `jdistill.hf.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jdistill.configs import load_config  # noqa: E402
from jdistill.configs.schema import MeshConfig  # noqa: E402
from jdistill.data.documents import documents  # noqa: E402
from jdistill.data.tokenized import tokenize_source  # noqa: E402
from jdistill.hf import from_pretrained, save_pretrained  # noqa: E402
from jdistill.hf.init_from import resolve_init_from  # noqa: E402
from jdistill.models import Transformer  # noqa: E402
from jdistill.text import load_tokenizer, train_tokenizer  # noqa: E402
from jdistill.train import run_job  # noqa: E402
from jdistill.train.job import checked_recipe  # noqa: E402
from jdistill.train.restore import load_stage  # noqa: E402
from tests.scale.pod_meshes import MESHES  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SEQ, FULL_SEQ = 64, 4096
ROWS = 320  # embedding rows of every tiny model
TOKENIZER_IDS = {"qwen3": 301, "llama": ROWS}  # Qwen3: padded embedding rows; Llama 3: none


def family(model) -> str:
    return "qwen3" if model.qk_norm else "llama"


def tiny_model(model, *, layers: int, d_model: int):
    """The config's architecture at toy size: same GQA ratio, qk-norm, tying, RoPE, norm eps, dtype, remat; a
    mixture of experts keeps 8 experts (a multiple of any scaled expert axis), top-2, expert hidden d_model."""
    ratio = model.num_heads // model.resolved_kv_heads
    if model.num_experts:
        model = dataclasses.replace(model, num_experts=8, experts_per_token=2, moe_mlp_dim=d_model)
    return dataclasses.replace(
        model,
        num_layers=layers,
        d_model=d_model,
        num_heads=2 * ratio,
        num_kv_heads=2,
        head_dim=8,
        mlp_dim=2 * d_model,
        vocab_size=ROWS,
        max_seq_len=SEQ,
    )


def corpus(work: Path) -> str:
    """`files:` glob of a slice of the embedded corpus (the first train / test documents of pystdlib_text)."""
    for split, count in (("train", 24), ("test", 4)):
        folder = work / "corpus" / split
        if not folder.is_dir():
            folder.mkdir(parents=True)
            docs = zip(range(count), documents("pystdlib_text", split), strict=False)
            rows = [{"text": doc["text"]} for _, doc in docs]
            (folder / "stdlib.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"files:{work}/corpus/{{split}}/*.jsonl"


def tokenizer_dir(work: Path, kind: str) -> Path:
    """A byte-level BPE trained here, standing in for the checkpoints' tokenizer.json."""
    out = work / f"tokenizer-{kind}"
    if not (out / "tokenizer.json").is_file():
        texts = [doc["text"] for _, doc in zip(range(24), documents("pystdlib_text", "train"), strict=False)]
        train_tokenizer(texts, TOKENIZER_IDS[kind], out)
    return out


def checkpoint(out: Path, model_config, tokenizer: Path, seed: int) -> Path:
    """A tiny random HF checkpoint folder (config.json, model.safetensors, the tokenizer files)."""
    if not (out / "config.json").is_file():
        model = Transformer(dataclasses.replace(model_config, dtype="float32"), rngs=nnx.Rngs(seed))
        save_pretrained(model, out)
        load_tokenizer(f"hf:{tokenizer}").save(out)
    return out


def tokenized(work: Path, kind: str, teacher_dir: Path) -> Path:
    """`jdistill tokenize --data files:... --tokenizer hf:TEACHER --out DIR`, once per tokenizer."""
    out = work / f"tokenized-{kind}"
    if not (out / "metadata.json").is_file():
        tokenize_source(corpus(work), f"hf:{teacher_dir}", out, progress=False)
    return out


def scaled_config(name: str, work: Path):
    """tpu_configs/NAME.yaml at toy size, reading the tiny checkpoints and tokenised data made here."""
    config = load_config(str(ROOT / "tpu_configs" / f"{name}.yaml"))
    kind = family(config.student.model)
    teacher = tiny_model(config.teacher.model, layers=2, d_model=48)
    student = tiny_model(config.student.model, layers=1, d_model=32)
    tokenizer = tokenizer_dir(work, kind)
    teacher_dir = checkpoint(work / name / "teacher-hf", teacher, tokenizer, seed=1)
    student_dir = checkpoint(work / name / "student-hf", student, tokenizer, seed=2)
    train = config.student.train
    full_devices = math.prod(
        getattr(config.mesh, axis) for axis in ("data", "fsdp", "expert", "dcn_data")
    )  # the batch-sharded axes
    per_device = train.batch_size // (train.grad_accum_steps * full_devices)
    mesh = MeshConfig(**MESHES[name], rules=config.mesh.rules)
    batch_devices = mesh.data * mesh.fsdp * mesh.expert * mesh.dcn_data
    options = dict(config.distill.options)
    if options.get("vocab_chunk"):
        options["vocab_chunk"] = max(8, options["vocab_chunk"] * SEQ // FULL_SEQ)
    return dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            name=f"tokenized:{tokenized(work, kind, teacher_dir)}",
            tokenizer=f"hf:{teacher_dir}",
            seq_len=SEQ,
            eval_batch_size=batch_devices,
            eval_max_batches=1,
        ),
        teacher=dataclasses.replace(config.teacher, init_from=f"hf:{teacher_dir}", model=teacher),
        student=dataclasses.replace(
            config.student,
            init_from=f"hf:{student_dir}",
            model=student,
            train=dataclasses.replace(
                train,
                steps=3,
                batch_size=train.grad_accum_steps * batch_devices * per_device,
                warmup_steps=1,
                eval_every=3,
                log_every=1,
                checkpoint_every=3,
            ),
        ),
        distill=dataclasses.replace(config.distill, options=options),
        run=dataclasses.replace(
            config.run,
            export=str(work / name / "exported"),
            progress=False,
            tensorboard=False,
            plot=False,
            sample_tokens=0,
        ),
        mesh=mesh,
    )


def run(name: str, work: Path) -> dict:
    started = time.perf_counter()
    config = scaled_config(name, work)
    run_dir = work / name / "run"
    summary = run_job(config, run_dir)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["stage"] == "student_kd" and r["split"] == "train"]
    exported_dir = Path(summary["export"])
    exported = from_pretrained(exported_dir, dtype=config.student.model.dtype)
    trained, _ = load_stage(run_dir, "student_kd")
    initial = from_pretrained(config.student.init_from.removeprefix("hf:"), dtype=config.student.model.dtype)
    tokens = np.random.default_rng(0).integers(0, TOKENIZER_IDS[family(config.student.model)], (2, SEQ))
    ours = np.asarray(trained(tokens.astype(np.int32)).logits, np.float32)
    theirs = np.asarray(exported(tokens.astype(np.int32)).logits, np.float32)
    params = [jax.tree.leaves(nnx.state(model, nnx.Param)) for model in (exported, initial)]
    pairs = zip(*params, strict=True)
    moved = max(float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max()) for a, b in pairs)
    hf = json.loads((exported_dir / "config.json").read_text())
    return {
        "name": name,
        "losses": losses,
        "eval_nll": summary["student_kd"].get("nll"),
        "teacher_nll": summary.get("teacher", {}).get("nll"),
        "export_logits_max_diff": float(np.abs(ours - theirs).max()),
        "logits_scale": float(np.abs(ours).max()),
        "params_moved": moved,
        "exported_files": sorted(p.name for p in exported_dir.iterdir()),
        "architecture": hf["architectures"][0],
        "tie_word_embeddings": hf["tie_word_embeddings"],
        "mesh": MESHES[name],
        "batch_size": config.student.train.batch_size,
        "grad_accum_steps": config.student.train.grad_accum_steps,
        "real_vocab": list(checked_recipe(resolve_init_from(config)).real_vocab or []),
        "seconds": time.perf_counter() - started,
    }


def main(argv: list[str]) -> int:
    work = Path(argv[0])
    for name in argv[1:]:
        print(json.dumps(run(name, work)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
