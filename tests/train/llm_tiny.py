"""Tiny sizes for the llm_kd / llm_gkd presets: the same pipeline (BPE trained on the corpus, Qwen3-style teacher,
block-influence pruning, every stage) in seconds."""

TINY_MODEL = [
    "teacher.model.num_layers=2",
    "teacher.model.d_model=16",
    "teacher.model.num_heads=2",
    "teacher.model.num_kv_heads=1",
    "teacher.model.head_dim=8",
    "teacher.model.mlp_dim=32",
    "teacher.model.vocab_size=320",
    "data.tokenizer=bpe:320",
    "student.prune.layers=1",
    "student.prune.calibration_batches=2",
]
TINY_TRAIN = [
    f"{stage}.train.{key}={value}"
    for stage in ("teacher", "student")
    for key, value in (
        ("steps", 4),
        ("warmup_steps", 1),
        ("eval_every", 2),
        ("log_every", 2),
        ("checkpoint_every", 2),
        ("batch_size", 4),
    )
]
TINY_LLM = [
    *TINY_MODEL,
    *TINY_TRAIN,
    "data.seq_len=32",
    "data.eval_batch_size=8",
    "data.eval_max_batches=1",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
    "run.sample_tokens=0",
]
TINY_GKD = [*TINY_LLM, "data.seq_len=64", "data.max_prompt_len=48"]
