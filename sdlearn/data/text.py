"""Text for the text-conditioned models: a CLIP tokenizer built here for the shapes captions (chapter 5).

CLIP's tokenizer (Radford et al. 2021, section 2.5; the GPT-2 scheme of Radford et al. 2019) is byte-pair encoding
(Sennrich et al. 2016) over bytes: text is lower-cased and split into words and punctuation, each word becomes
its UTF-8 bytes, each byte a printable stand-in character (``bytes_to_unicode``), and the last one carries the
end-of-word mark "</w>". Then learned merges join the most frequent neighbouring pieces, in the order learned:

    learn:  repeat { (a, b) = argmax over neighbouring pairs of their count in the corpus; merge a b -> ab }
    apply:  repeat { of the pairs in the word, merge the one learned earliest } until no learned pair is left

The vocabulary holds all 256 byte characters and their 256 end-of-word forms, so any text still tokenizes
(as single characters at worst; nothing is ever dropped or unknown), then one token per merge, then
``<|startoftext|>`` and ``<|endoftext|>``. ``build_tokenizer_files`` learns the merges from the training
captions and writes vocab.json, merges.txt and tokenizer_config.json: the files ``transformers.CLIPTokenizer``
loads. ``tokenize`` pads to ``model_max_length`` with the end token, as Stable Diffusion does, and warns with the
dropped words when a prompt is longer.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter

import torch

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 32  # tokens per prompt, start and end included (CLIP: 77); the longest caption takes 16
# CLIP's pre-tokenizer, for ASCII text: special tokens, contractions, runs of letters, single digits, and runs of
# anything else but spaces (CLIP's pattern uses \p{L} and \p{N}; for lower-case ASCII they are [a-z] and [0-9]).
WORD_RE = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 bytes to printable characters: printable bytes stand for themselves, the others
    (space, control bytes, ...) are moved to chr(256 + n), so BPE never sees whitespace or control characters."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = keep[:], 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, map(chr, chars)))


def words_of(text: str) -> list[tuple[str, ...]]:
    """Pre-tokenize: lower-case, split into words, each a tuple of byte characters, the last with "</w>"."""
    table = bytes_to_unicode()
    out = []
    for word in WORD_RE.findall(" ".join(text.lower().split())):
        chars = [table[b] for b in word.encode("utf-8")]
        out.append((*chars[:-1], chars[-1] + END_OF_WORD))
    return out


def _merge(word: tuple[str, ...], a: str, b: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges(texts, min_count: int = 2, max_merges: int | None = None) -> list[tuple[str, str]]:
    """Byte-pair merges learned from ``texts``: repeatedly merge the most frequent neighbouring pair (ties broken
    by the pair itself, so the result is deterministic), until no pair occurs ``min_count`` times."""
    words = Counter(w for text in texts for w in words_of(text))  # {word as a tuple of pieces: count}
    merges: list[tuple[str, str]] = []
    while max_merges is None or len(merges) < max_merges:
        pairs: Counter = Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), n = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if n < min_count:
            break
        merges.append((a, b))
        words = Counter({_merge(word, a, b): n for word, n in words.items()})
    return merges


def vocabulary(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's layout: 256 byte characters, the same with "</w>", one token per merge, then start and end."""
    base = list(bytes_to_unicode().values())
    tokens = base + [c + END_OF_WORD for c in base] + [a + b for a, b in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}  # a merge can rebuild a base token: keep it once


def build_tokenizer_files(folder: str | os.PathLike, texts, model_max_length: int = MODEL_MAX_LENGTH) -> str:
    """Learn merges from ``texts`` and write vocab.json, merges.txt, tokenizer_config.json and
    special_tokens_map.json into ``folder``: what ``transformers.CLIPTokenizer.from_pretrained(folder)`` loads."""
    merges = learn_merges(texts)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocabulary(merges), f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    specials = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}  # pad with the end token, as SD
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
                   "clean_up_tokenization_spaces": False, **specials}, f, indent=2)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump(specials, f, indent=2)
    return os.fspath(folder)


def load_tokenizer(folder: str | os.PathLike):
    """``transformers.CLIPTokenizer`` from a folder of tokenizer files (a shipped model's, or one written above)."""
    from transformers import CLIPTokenizer

    if not os.path.isfile(os.path.join(folder, "vocab.json")):
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no vocab.json; expected a CLIP tokenizer folder (vocab.json, "
                                "merges.txt); write one with sdlearn.data.text.build_tokenizer_files.")
    return CLIPTokenizer.from_pretrained(os.fspath(folder))


def tokenize(tokenizer, prompts: str | list[str]) -> torch.Tensor:
    """Token ids (N, model_max_length): <|startoftext|>, the prompt's tokens, <|endoftext|>, then <|endoftext|>
    as padding up to model_max_length (Stable Diffusion's convention). A longer prompt is cut to fit, with a
    warning that names the words dropped."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a string or a non-empty list of strings, got {prompts!r}.")
    length = tokenizer.model_max_length
    for prompt, ids in zip(prompts, tokenizer(prompts, padding=False, truncation=False, verbose=False).input_ids):
        if len(ids) > length:  # ids = [start, *tokens, end]: the kept tokens are ids[1 : length - 1]
            dropped = tokenizer.decode(ids[length - 1 : -1])
            warnings.warn(f"the prompt {prompt!r} is {len(ids)} tokens, longer than the {length} the text encoder reads; "
                          f"these words were dropped: {dropped!r}. Shorten the prompt to keep them.", stacklevel=2)
    return tokenizer(prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
