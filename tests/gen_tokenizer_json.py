#!/usr/bin/env python3
"""Writes a Llama-style Hugging Face tokenizer.json from a llama2.c tokenizer.bin.

The test fixture tests/data/tok512.tokenizer.json (and its twin with [a, b] merge pairs) is
made by this script from ../shared/fixtures/models/tok512.bin:

    python3 tests/gen_tokenizer_json.py ../shared/fixtures/models/tok512.bin \
        tests/data/tok512.tokenizer.json
    python3 tests/gen_tokenizer_json.py --pairs ../shared/fixtures/models/tok512.bin \
        tests/data/tok512-pairs.tokenizer.json

The merges are derived from the SentencePiece vocabulary the way Hugging Face's slow->fast
converter does for Llama: for every piece, each split into two pieces that are both in the
vocabulary is a merge (splits of one piece ordered by the ids of their halves), and all merges
are ordered by the merged piece's score, highest first (stable, so equal scores keep vocabulary
order). Standard library only.
"""
import json
import sys

from tokbin import read_tokenizer_bin

SPACE = "\u2581"


def read_pieces(path):
    """tokenizer.bin's tokens as (text, score): the BOS/EOS spellings of llama2.c made <s> and
    </s>, spaces as the SentencePiece marker."""
    pieces = []
    for raw, score in read_tokenizer_bin(path):
        if raw == b"\n<s>\n":
            text = "<s>"
        elif raw == b"\n</s>\n":
            text = "</s>"
        else:
            text = raw.decode("utf-8").replace(" ", SPACE)
        pieces.append((text, score))
    return pieces


def is_byte_piece(p):
    return len(p) == 6 and p.startswith("<0x") and p.endswith(">")


def build(pieces, pairs):
    vocab = {}
    for i, (p, _) in enumerate(pieces):
        vocab.setdefault(p, i)
    merges = []
    for piece, score in pieces:
        if piece in ("<unk>", "<s>", "</s>") or is_byte_piece(piece):
            continue
        local = []
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2], reverse=True)
    merges = [[a, b] if pairs else a + " " + b for a, b, _ in merges]

    def added(i, content):
        return {"id": i, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}

    specials = [(vocab[s], s) for s in ("<unk>", "<s>", "</s>") if s in vocab]
    bos = "<s>"
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(i, s) for i, s in specials],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>",
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": vocab, "merges": merges},
    }


def main(argv):
    pairs = "--pairs" in argv
    args = [a for a in argv[1:] if a != "--pairs"]
    if len(args) != 2:
        sys.exit("usage: gen_tokenizer_json.py [--pairs] tokenizer.bin out.json")
    doc = build(read_pieces(args[0]), pairs)
    with open(args[1], "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv)
