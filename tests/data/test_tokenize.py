"""Text sources and `jdistill tokenize`: file formats, kinds, pystdlib_functions, the on-disk format, bad input."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jdistill.cli import main
from jdistill.data.documents import documents
from jdistill.data.functions import functions_of
from jdistill.data.tokenized import TokenizedSplit, read_metadata, tokenize_source
from jdistill.errors import DataError
from tests.data.lm_fixtures import write_jsonl


def tokenize(tmp_path, source, **kwargs):
    kwargs.setdefault("splits", ["train"])
    return tokenize_source(source, "bytes", tmp_path / "out", progress=False, **kwargs)


def test_txt_jsonl_and_parquet_files_give_the_same_documents(tmp_path):
    texts = ["first doc", "second\nline", "third ünïcode"]
    for index, text in enumerate(texts):
        (tmp_path / "txt" / "train").mkdir(parents=True, exist_ok=True)
        (tmp_path / "txt" / "train" / f"{index}.txt").write_text(text, encoding="utf-8")
    write_jsonl(tmp_path / "jsonl" / "train" / "a.jsonl", [{"body": text} for text in texts])
    (tmp_path / "parquet" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"body": texts}), tmp_path / "parquet" / "train" / "a.parquet")
    got = {
        "txt": [d["text"] for d in documents(f"files:{tmp_path}/txt/{{split}}/*.txt", "train")],
        "jsonl": [d["text"] for d in documents(f"files:{tmp_path}/jsonl/{{split}}/*.jsonl", "train", text_key="body")],
        "parquet": [d["text"] for d in documents(f"files:{tmp_path}/parquet/{{split}}/*", "train", text_key="body")],
    }
    assert got == {"txt": texts, "jsonl": texts, "parquet": texts}


def test_without_split_in_the_glob_records_are_split_by_a_stable_hash(tmp_path):
    write_jsonl(tmp_path / "all.jsonl", [{"text": f"doc {index}"} for index in range(200)])
    train = [d["text"] for d in documents(f"files:{tmp_path}/*.jsonl", "train")]
    test = [d["text"] for d in documents(f"files:{tmp_path}/*.jsonl", "test")]
    assert sorted(train + test) == sorted(f"doc {index}" for index in range(200))
    assert 0 < len(test) < 30  # about 5%


def test_tokenized_folder_holds_ids_spans_prompt_lengths_and_counts(tmp_path):
    records = [{"prompt": "def f():", "completion": " return 1"}, {"prompt": "x=", "completion": "2"}]
    write_jsonl(tmp_path / "train" / "a.jsonl", records)
    metadata = tokenize(tmp_path, f"files:{tmp_path}/{{split}}/*.jsonl", shard_size=1)
    assert metadata == read_metadata(tmp_path / "out")
    assert metadata["kind"] == "prompt_completion" and metadata["id_dtype"] == "uint8"
    assert metadata["tokenizer"] == {
        "spec": "bytes", "fingerprint": "bytes-v1", "vocab_size": 256, "eos_id": 0, "pad_id": 0, "bos_id": None,
    }  # fmt: skip
    assert metadata["splits"]["train"] == {"documents": 2, "tokens": 20, "bytes": 20, "shards": 2}
    split = TokenizedSplit(tmp_path / "out", "train")
    ids, spans, prompt_tokens = split.document(0)
    assert bytes(ids.astype(np.uint8)) == b"def f(): return 1" and prompt_tokens == 8
    np.testing.assert_array_equal(spans, [[8, 17]])
    np.testing.assert_array_equal(split.lengths, [17, 3])
    np.testing.assert_array_equal(split.prompt_lengths, [8, 2])
    assert not list((tmp_path).glob(".out.*"))  # the temporary folder was renamed


def test_pystdlib_functions_cut_signature_and_docstring_from_the_body():
    source = 'import os\n\n\ndef f(x):\n    """Add one."""\n    y = x + 1\n    return y\n\n\ndef g():\n    pass\n'
    assert list(functions_of(source)) == [('def f(x):\n    """Add one."""\n', "    y = x + 1\n    return y\n", 4)]


def test_pystdlib_functions_follow_the_parent_split(data_dir):
    test_functions = list(documents("pystdlib_functions", "test", data_dir))
    assert len(test_functions) > 50
    parents = {d["where"].rsplit(":", 1)[0] for d in test_functions}
    assert all(where.startswith("pystdlib_text/test[") for where in parents)
    assert all(d["prompt"].lstrip().startswith(("def ", "async def ")) for d in test_functions)


def test_tokenize_cli_writes_the_folder_and_prints_counts(tmp_path, capsys):
    write_jsonl(tmp_path / "raw" / "train" / "a.jsonl", [{"text": "hello"}, {"text": "world!"}])
    write_jsonl(tmp_path / "raw" / "test" / "a.jsonl", [{"text": "held out"}])
    pattern = f"files:{tmp_path}/raw/{{split}}/*.jsonl"
    assert main(["tokenize", "--data", pattern, "--out", str(tmp_path / "tok"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 documents, 11 tokens" in printed and "test: 1 documents, 8 tokens" in printed
    assert read_metadata(tmp_path / "tok")["splits"]["test"]["documents"] == 1


BAD_RECORDS = [
    ([{"text": "ok"}, {"txt": "typo"}], r"a\.jsonl:2: expected a field 'text'"),
    ([{"text": "ok"}, {"prompt": "p", "completion": "c"}], r"a\.jsonl:2: a prompt_completion record in a source"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], r"a\.jsonl:1: a chat without an assistant turn"),
    ([{"text": 3}], r"a\.jsonl:1: field 'text' must be a string"),
]


@pytest.mark.parametrize(("records", "message"), BAD_RECORDS)
def test_bad_records_are_one_line_errors_naming_file_and_line_and_leave_nothing(tmp_path, records, message):
    write_jsonl(tmp_path / "train" / "a.jsonl", records)
    with pytest.raises(DataError, match=message):
        tokenize(tmp_path, f"files:{tmp_path}/{{split}}/*.jsonl")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_invalid_json_and_empty_globs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: not valid JSON"):
        tokenize(tmp_path, f"files:{tmp_path}/{{split}}/*.jsonl")
    assert main(["tokenize", "--data", f"files:{tmp_path}/none/*.txt", "--out", str(tmp_path / "o")]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["tokenize", "--data", "pystdlib_text", "--out", str(tmp_path / "full")]) == 2
    assert "already exists" in capsys.readouterr().err and (tmp_path / "full" / "keep.txt").exists()


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.txt").write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(DataError, match=r"a\.txt: cannot read"):
        tokenize(tmp_path, f"files:{tmp_path}/{{split}}/*.txt")


def test_chat_records_are_tokenised_with_the_assistant_mask(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    write_jsonl(tmp_path / "train" / "a.jsonl", [chat])
    assert tokenize(tmp_path, f"files:{tmp_path}/{{split}}/*.jsonl")["kind"] == "chat"
    ids, spans, prompt_tokens = TokenizedSplit(tmp_path / "out", "train").document(0)
    assert len(spans) >= 1 and prompt_tokens == spans[0][0] > 0
    assert "hello" in bytes(ids[spans[0][0] : spans[0][1]].astype(np.uint8)).decode()
    assert json.loads((tmp_path / "out" / "metadata.json").read_text())["kind"] == "chat"


def test_tfds_text_datasets_read_the_configured_text_key(data_dir):
    embedded = [d["text"] for d in documents("pystdlib_text", "test", data_dir)]
    prepared = [d["text"] for d in documents("tfds:pystdlib_text", "test", data_dir, text_key="bytes")]
    assert prepared == embedded
    with pytest.raises(DataError, match=r"no feature 'text' \(set data.text_key to one of .*bytes"):
        next(documents("tfds:pystdlib_text", "test", data_dir))
