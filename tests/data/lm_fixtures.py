"""Small tokenised folders written from in-test documents (bytes tokenizer), for the packing and prompt tests."""

import json
from pathlib import Path

from jdistill.data.tokenized import TokenizedSplit, tokenize_source


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def tokenized_split(tmp_path: Path, records: list[dict], split: str = "train", **kwargs) -> TokenizedSplit:
    """`records` (jsonl objects) as split `split` of a fresh tokenised folder (bytes tokenizer)."""
    write_jsonl(tmp_path / "raw" / split / "data.jsonl", records)
    out = tmp_path / "tokenized"
    tokenize_source(f"files:{tmp_path}/raw/{{split}}/*.jsonl", "bytes", out, splits=[split], progress=False, **kwargs)
    return TokenizedSplit(out, split)
