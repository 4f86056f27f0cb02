"""`jdistill tokenizer train`: writes a loadable tokenizer directory and prints vocab size, fingerprint and
compression; bad arguments exit 2 with one line and write nothing."""

import re

import pytest

from jdistill.cli import main
from jdistill.text import load_tokenizer
from tests.text.conftest import corpus_texts


def test_tokenizer_train_writes_and_reports(data_dir, tmp_path, capsys):
    out = tmp_path / "tok"
    argv = ["tokenizer", "train", "--data", "pystdlib_text", "--vocab-size", "400", "--out", str(out)]
    assert main([*argv, "--max-documents", "30", "--data-dir", str(data_dir)]) == 0
    captured = capsys.readouterr()
    assert "training byte-level BPE (vocab 400) on 30 documents" in captured.err
    tok = load_tokenizer(str(out))
    assert f"vocab size   {tok.vocab_size}" in captured.out and tok.vocab_size == 400
    assert f"fingerprint  {tok.fingerprint}" in captured.out
    compression = float(re.search(r"compression  ([0-9.]+) bytes/token on pystdlib_text/test", captured.out)[1])
    held_out = corpus_texts(data_dir, "test")
    assert compression == pytest.approx(
        sum(len(t.encode()) for t in held_out) / sum(map(len, tok.encode_batch(held_out))), abs=1e-3
    )
    assert 1.5 < compression < 4.0
    assert [path.name for path in tmp_path.iterdir()] == ["tok"]


def test_tokenizer_train_bad_arguments_exit_2(data_dir, tmp_path, capsys):
    base = ["tokenizer", "train", "--data", "pystdlib_text", "--out", str(tmp_path / "t")]
    assert main([*base, "--vocab-size", "10"]) == 2
    assert main([*base, "--vocab-size", "300", "--max-documents", "0"]) == 2
    assert main(["tokenizer", "train", "--data", "nope", "--vocab-size", "300", "--out", str(tmp_path / "t")]) == 2
    assert main([*base, "--vocab-size", "300", "--split", "validation"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 4 and all(line.startswith("jdistill: error: ") for line in errors)
    assert "too small" in errors[0] and "max-documents" in errors[1] and "unknown dataset" in errors[2]
    assert "no split 'validation'" in errors[3]
    assert list(tmp_path.iterdir()) == []
