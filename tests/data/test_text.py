"""The CLIP tokenizer built here: transformers loads the files, round trips, padding with the end token, the
truncation warning naming the dropped words, and unknown lower-case words spelled out in characters."""

from __future__ import annotations

import json
import string
import warnings

import pytest
from transformers import CLIPTokenizer

from sdlearn.data.shapes import load_shapes
from sdlearn.data.text import (BOS, END_OF_WORD, EOS, build_tokenizer_files, bytes_to_unicode, learn_merges,
                               load_tokenizer, tokenize, words_of)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer_files(folder, load_shapes("train", 300, compositions="seen").captions, model_max_length=16)
    return CLIPTokenizer.from_pretrained(str(folder))  # transformers' own class loads the folder


def test_vocabulary_holds_every_byte_character(tokenizer):
    vocab = tokenizer.get_vocab()
    table = bytes_to_unicode()
    for c in string.ascii_lowercase + string.digits + string.punctuation:
        assert table[ord(c)] in vocab and table[ord(c)] + END_OF_WORD in vocab, c
    assert len(set(table.values())) == 256 and all(ch in vocab and ch + END_OF_WORD in vocab for ch in table.values())
    assert tokenizer.bos_token == BOS and tokenizer.eos_token == EOS and tokenizer.pad_token == EOS


def test_caption_words_are_single_tokens(tokenizer):
    ids = tokenizer("a small red circle above a large blue square").input_ids
    assert len(ids) == 9 + 2  # nine words, each one learned token, between start and end


def test_round_trip(tokenizer):
    for text in load_shapes("test", 50).captions + ["a zebra quickly jumped over 3 dogs!"]:
        ids = tokenizer(text).input_ids
        back = tokenizer.decode(ids, skip_special_tokens=True)
        assert tokenizer(back).input_ids == ids  # text -> ids -> text -> the same ids
        if "," not in text and "!" not in text:  # punctuation comes back as its own word ("circle ,")
            assert back == text


def test_padding_with_the_end_token(tokenizer):
    ids = tokenize(tokenizer, ["a small red circle", "a large blue square above a small green triangle"])
    assert ids.shape == (2, 16)
    assert ids[0, 0] == tokenizer.bos_token_id
    assert ids[0, 5:].tolist() == [tokenizer.eos_token_id] * 11  # end, then padding: the same token (SD's way)


def test_truncation_warns_with_the_dropped_words(tokenizer):
    long = "a small red circle above a large blue square and a small green triangle left of everything"
    with pytest.warns(UserWarning, match="dropped: 'left of everything'"):
        ids = tokenize(tokenizer, long)
    assert ids.shape == (1, 16) and ids[0, -1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[0], skip_special_tokens=True) == long[: long.index(" left")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits gives no warning
        tokenize(tokenizer, "a small red circle")


def test_unknown_lower_case_words_become_characters(tokenizer):
    tokens = tokenizer.tokenize("qwxz")
    assert tokens == ["q", "w", "x", "z" + END_OF_WORD]
    ids = tokenizer("zebras jump").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]  # (unk is the end token: it never appears inside)
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zebras jump"


def test_learn_merges_is_byte_pair_encoding():
    # "low" x5 and "lower" x2: the most frequent pair first, ties broken by the pair itself
    merges = learn_merges(["low"] * 5 + ["lower"] * 2)
    assert merges[:2] == [("l", "o"), ("lo", "w</w>")]
    assert words_of("Hi,  there") == [("h", "i</w>"), (",</w>",), ("t", "h", "e", "r", "e</w>")]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="non-empty list"):
        tokenize(None, [])


def test_shipped_tokenizer_files_come_from_the_training_captions(tmp_path):
    from sdlearn.utils.files import resolve_pretrained

    try:
        folder = resolve_pretrained("shapes-clip")
    except FileNotFoundError:
        pytest.skip("shapes-clip is not shipped yet")
    shipped = load_tokenizer(folder)
    assert shipped.model_max_length == 32
    ids = tokenize(shipped, "a large purple circle below a small yellow triangle")  # held-out pairs: still words
    assert (ids[0] != shipped.eos_token_id).sum() == 10  # start + nine word tokens
    with open(f"{folder}/merges.txt") as f:
        assert f.readline().startswith("#version")
    assert json.load(open(f"{folder}/tokenizer_config.json"))["pad_token"] == EOS


@pytest.mark.slow
def test_shipped_merges_are_learned_from_the_seen_training_captions(tmp_path):
    """Rebuilding the tokenizer from load_shapes("train", compositions="seen") gives the shipped files exactly."""
    from sdlearn.utils.files import resolve_pretrained

    try:
        folder = resolve_pretrained("shapes-clip")
    except FileNotFoundError:
        pytest.skip("shapes-clip is not shipped yet")
    build_tokenizer_files(tmp_path, load_shapes("train", compositions="seen").captions)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (tmp_path / name).read_text() == open(f"{folder}/{name}").read(), name
