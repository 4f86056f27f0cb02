"""The teacher's own tokens of each packed student window, aligned by the text both have read
(`jdistill.data.teacher_view`): checked against decoding the two tokenizations' prefixes."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from jdistill.data.packing import PackedWindows
from jdistill.data.teacher_view import TeacherView, default_teacher_seq_len
from jdistill.data.tokenized import TokenizedSplit, tokenize_source
from jdistill.text import load_tokenizer, train_tokenizer
from tests.data.lm_fixtures import write_jsonl

SNIPPETS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "# café, naïve, ünïcödé: €100\nprint('héllo wörld')\n",
    "import os\nfor name in os.listdir('.'):\n    print(name.upper())\n",
    "while True:\n    break\n",
]


def documents(count: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"text": "".join(rng.choice(SNIPPETS, size=rng.integers(1, 5)))} for _ in range(count)]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """(student split, teacher split, student tokenizer, teacher tokenizer): the same documents tokenised by a BPE of
    300 ids (student) and one of 420 ids trained on other texts (teacher: different merges, different cuts)."""
    root = tmp_path_factory.mktemp("view")
    records = documents(60)
    write_jsonl(root / "raw" / "train" / "data.jsonl", records)
    texts = [record["text"] for record in records]
    student = train_tokenizer(texts, 300, root / "student_tok")
    teacher = train_tokenizer([text.upper() + text[::-1] for text in texts], 420, root / "teacher_tok")
    out = {}
    for name in ("student", "teacher"):
        tokenize_source(
            f"files:{root}/raw/{{split}}/*.jsonl",
            str(root / f"{name}_tok"),
            root / name,
            splits=["train"],
            progress=False,
        )
        out[name] = TokenizedSplit(root / name, "train")
    return out["student"], out["teacher"], student, teacher


def view_of(student_split, teacher_split, student_tok, teacher_tok, seq_len, teacher_seq_len):
    windows = PackedWindows(student_split, seq_len)
    view = TeacherView(
        windows,
        teacher_split,
        student_byte_lengths=student_tok.token_byte_lengths(),
        teacher_byte_lengths=teacher_tok.token_byte_lengths(),
        teacher_seq_len=teacher_seq_len,
    )
    return windows, view


def test_the_same_tokenizer_aligns_every_scored_position_with_itself(splits):
    student_split, _, student_tok, _ = splits
    windows, view = view_of(student_split, student_split, student_tok, student_tok, 32, 32)
    for k in range(len(windows)):
        row, teacher = windows[k], view[k]
        np.testing.assert_array_equal(teacher["teacher_aligned"], row["mask"])
        index = teacher["teacher_index"][row["mask"]]
        np.testing.assert_array_equal(teacher["teacher_inputs"][index], row["inputs"][row["mask"]])
        np.testing.assert_array_equal(teacher["teacher_positions"][index], row["positions"][row["mask"]])


def test_aligned_positions_have_read_the_same_text_and_no_alignment_is_missed(splits):
    student_split, teacher_split, student_tok, teacher_tok = splits
    windows, view = view_of(student_split, teacher_split, student_tok, teacher_tok, 24, 64)

    @functools.cache
    def read(side: str, document: int, offset: int) -> bytes:
        """The UTF-8 text a model has read after its input `offset` of `document` (decoded, not from byte tables)."""
        split, tok = (student_split, student_tok) if side == "student" else (teacher_split, teacher_tok)
        return tok.decode(split.document(document)[0][: offset + 1]).encode()

    aligned_total = scored_total = 0
    for k in range(0, len(windows), 3):
        row, teacher = windows[k], view[k]
        _, document, offset, _ = windows.stream_slice(k * 24, k * 24 + 25)
        segments, positions = teacher["teacher_segment_ids"], teacher["teacher_positions"]
        for i in np.flatnonzero(row["mask"]):
            d, o = int(document[i]), int(offset[i])
            scored_total += 1
            if teacher["teacher_aligned"][i]:
                aligned_total += 1
                j = int(teacher["teacher_index"][i])
                assert teacher["teacher_inputs"][j] == teacher_split.document(d)[0][positions[j]]
                assert read("teacher", d, int(positions[j])) == read("student", d, o)
            else:  # every teacher token ending where student token o ends starts before this window's piece
                assert (segments > 0).sum() < 64  # the row was not cut
                first = int(offset[:24][document[:24] == d].min())  # the piece's first input
                before = len(read("student", d, first - 1)) if first else 0  # bytes before the piece
                for q in range(len(teacher_split.document(d)[0])):
                    if read("teacher", d, q) == read("student", d, o):
                        assert (len(read("teacher", d, q - 1)) if q else 0) < before, (k, i, q)
    assert 0.2 < aligned_total / scored_total < 1.0  # different cuts: some, not all, positions align


def test_a_short_teacher_row_is_cut_and_its_lost_positions_unaligned(splits):
    student_split, teacher_split, student_tok, teacher_tok = splits
    windows, full = view_of(student_split, teacher_split, student_tok, teacher_tok, 32, 128)
    _, short = view_of(student_split, teacher_split, student_tok, teacher_tok, 32, 16)
    for k in range(len(windows)):
        a, b = full[k], short[k]
        np.testing.assert_array_equal(b["teacher_inputs"], a["teacher_inputs"][:16])
        kept = a["teacher_aligned"] & (a["teacher_index"] < 16)
        np.testing.assert_array_equal(b["teacher_aligned"], kept)
        np.testing.assert_array_equal(b["teacher_index"][kept], a["teacher_index"][kept])


def test_the_default_teacher_row_fits_the_token_ratio(splits):
    student_split, teacher_split, _, _ = splits
    ratio = (teacher_split.lengths + 1).sum() / (student_split.lengths + 1).sum()
    width = default_teacher_seq_len(student_split, teacher_split, 100)
    assert width % 8 == 0 and 100 * ratio * 1.1 <= width < 100 * ratio * 1.1 + 8


def test_a_different_document_count_is_refused(tmp_path, splits):
    from jdistill.errors import DataError

    student_split, _, student_tok, _ = splits
    write_jsonl(tmp_path / "raw" / "train" / "data.jsonl", documents(3))
    tokenize_source(
        f"files:{tmp_path}/raw/{{split}}/*.jsonl", "bytes", tmp_path / "t", splits=["train"], progress=False
    )
    with pytest.raises(DataError, match=r"3 documents .* has 60"):
        view_of(student_split, TokenizedSplit(tmp_path / "t", "train"), student_tok, load_tokenizer("bytes"), 32, 32)
