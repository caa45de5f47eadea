#!/usr/bin/env node
// Golden ids for test_tokenizer's byte-level BPE tests, from the Rust Hugging Face `tokenizers`
// library itself (0.22, through the prebuilt N-API binding in the npm package
// @anush008/tokenizers). Run once; the output is committed, and the test needs no npm:
//
//   npm install --prefix /tmp/tokrs @anush008/tokenizers@0.6.0
//   NODE_PATH=/tmp/tokrs/node_modules node tests/gen_bpe_goldens.js ../shared/fixtures \
//       > tests/data/bpe_goldens.txt
//
// Tokenizers: the SmolLM2 tokenizer.json of the fixtures (Digits + ByteLevel), and the two
// small ones that tests/trim_tokenizer.py cuts from Qwen3's (NFC, Qwen2 Split regex, merges as
// pairs, non-special added tokens) and Llama-3-style (Split regex with \p{N}{1,3},
// ignore_merges, BOS template), and a variants one with what those three leave out (NFKC,
// every Split behavior, invert, String patterns, Digits runs, ByteLevel's add_prefix_space and
// regex, added tokens matched in normalized text or with single_word, lstrip, rstrip).
//
// Output lines: NAME MODE TEXT DECODED N id1 ... idN, where TEXT and DECODED are the UTF-8
// bytes in hex ("-" when empty), MODE is "plain" (add_special_tokens false) or "bos" (the
// post-processor's template applied), and DECODED is decode(ids, skip_special_tokens=false).
// The strings: hand-written cases (prose, code, numbers, runs of spaces, tabs and newlines,
// contractions, emoji, CJK, Arabic, combining marks, special tokens, the empty string), lines
// of the TinyStories excerpt, and mixes of those drawn by a fixed-seed generator.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('@anush008/tokenizers');

const fixtures = process.argv[2] || '../shared/fixtures';
const here = __dirname;
const TOKENIZERS = [
  ['smollm2', path.join(fixtures, 'tokenizers/smollm2-135m/tokenizer.json')],
  ['qwen3-4k', path.join(here, 'data/qwen3-4k.tokenizer.json')],
  ['llama3style-4k', path.join(here, 'data/llama3style-4k.tokenizer.json')],
  ['variants-4k', path.join(here, 'data/variants-4k.tokenizer.json')],
];

const CASES = [
  '', ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', ' \n ', '\t\t x', 'a', 'A', '.',
  'Hello world', 'Hello, world!', ' Hello', 'Hello ', 'hello   world', 'hello\tworld',
  'hello\nworld', 'hello\n\n\nworld', 'hello \n world', 'line one\r\nline two\r\n',
  'Once upon a time, there was a little girl named Lily.',
  'The quick brown fox jumps over the lazy dog.',
  "I'm sure you'll see they've done it, haven't they? We'd, I'd, she's.",
  "DON'T SHOUT, I'M HERE. It'S MiXeD.", "rock 'n' roll", "'s 't 're 've 'm 'll 'd",
  '12345', '3.14159', '1,000,000', '2026-12-02T06:08:27Z', 'v1.2.3-rc4', '0x1F600',
  '+44 (0)20 7946 0958', '99 bottles', 'a1b2c3', '١٢٣ ٤٥٦', '²³ ½ ¾', 'Ⅻ ⅷ', '１２３ＡＢＣ',
  'int main(void) { return 0; }',
  'for (int i = 0; i < n; i++) {\n\tsum += a[i] * b[i];\n}\n',
  'def f(x):\n    return x ** 2  # square\n',
  '    indented four\n        eight\n',
  '<div class="x">&amp; &lt;tag&gt;</div>', 'SELECT * FROM t WHERE id = 42;',
  '{"text": "json", "n": [1, 2, 3]}', 'path/to/file.txt', 'https://example.com/a?b=c&d=e',
  'snake_case_name CamelCaseName kebab-case-name', '!!!???...', '---', '***bold***',
  '😀', '🙂🙃', '👍🏽', '👨‍👩‍👧‍👦', '🇯🇵🇫🇷', 'I ❤️ NY', '✓ ✗ → ← ∞ ≠ ≤',
  '日本語のテキスト', '中文文本，标点符号。', '한국어 텍스트', 'ไทย ภาษา',
  'مرحبا بالعالم', 'السلام عليكم ورحمة الله', 'שלום עולם', 'Привет, мир!', 'Ελληνικά κείμενα',
  'हिन्दी पाठ', 'Ünïcödé façade naïve café résumé', 'Straße Œuvre ß',
  'e\u0301', 'cafe\u0301', 'A\u030a', 'n\u0303o', '\u1100\u1161\u11a8', 'a\u0300\u0301\u0302',
  'ﬁ ﬂ', 'Å Å', '\u00a0non-breaking\u00a0space', 'ideographic\u3000space', 'line\u2028sep',
  'zero\u200bwidth', 'soft\u00adhyphen', 'tab\tthen  two  spaces', 'trailing spaces   ',
  '   leading spaces', ' \t \t ', '\n\t\n', 'word\n\n', '\n\nword',
  '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|im_start|>user\nHi<|im_end|>\n',
  'text<|endoftext|>more', ' <|endoftext|> ', '<|endoftext|><|endoftext|>',
  '<|begin_of_text|>Hello<|eot_id|>', '<|start_header_id|>system<|end_header_id|>\n\n',
  '<tool_call>{"a":1}</tool_call>', '<think>\n\n</think>', '<|im_start', 'im_start|>',
  '<<|im_end|>>', '<|fim_prefix|>def<|fim_suffix|>', '<s> </s> <unk>', 'a [[mask]] b', '[[mask]][[mask]]', 'ｆｕｌｌ [[ｍａｓｋ]]',
  'x::y::::z', 'pre-fix--dash -', 'a,b;c,,d', 'ABCdefGHI', 'A1B22C333',
  'a <|ls|> b', 'a   <|rs|>   b', 'x<|both|>  y', '  <|both|>\n', '\t<|both|>\t<|both|>',
  'magic word', 'amagic', 'magic_x', 'magic!', 'the magic.', 'magicmagic', '日本magic',
  'é magic ٣magic', '<|rs|><|ls|>', 'a \u3000<|ls|>', 'x [[sw]] y', 'x[[sw]]', ' [[ｓｗ]] ',
  'a\x1c\x1d\x1e\x1f b', '\x1c', ' \x1d ', 'a\u0085 b', 'x\u180e y', 'p\u2028 q', '\v\f x',
  '\x00nul\x7f', '\x01\x02\x03', 'bell\x07tab\tesc\x1b[0m',
  'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'ab'.repeat(30), '1234567890'.repeat(4),
  ' '.repeat(17) + 'x', '\t'.repeat(5), '\n'.repeat(7), '.'.repeat(12),
];

function fixtureLines() {
  const p = path.join(fixtures, 'text/tinystories-valid-excerpt.txt');
  const lines = fs.readFileSync(p, 'utf8').split('\n');
  const out = [];
  for (let i = 0; i < lines.length && out.length < 40; i += 7) {
    const s = lines[i].slice(0, 400);
    if (s.trim()) out.push(s);
  }
  return out;
}

// mulberry32: a fixed-seed generator, so the mixes are the same on every run
function rng(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const PIECES = [
  'the', 'The', ' cat', 'sat', ' on', ' mat', 'running', "n't", "'s", "'LL", ' 42', '7', '2026',
  '3.5', ' ', '  ', '    ', '\t', '\n', '\r\n', '\n\n', '!', '?', '...', ',', '(', ')', '{', '}',
  '=', '==', '->', '#', '//', '"', "'", '😀', '🚀', '👍🏽', '日本', '中文', '한국', 'مرحبا',
  'العالم', 'שלום', 'Привет', 'é', 'e\u0301', 'ñ', '\u0301', 'ß', '٣', '½', '\u00a0', '\u3000',
  '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|eot_id|>', '<|begin_of_text|>', '<think>',
  'foo_bar', 'x86_64', 'HTTP/1.1', 'a.b.c', '[[mask]]', '-', '::', ';', 'ＡＢ', '<|ls|>',
  '<|rs|>', '<|both|>', 'magic', ' magic ', '[[sw]]',
];

function mixes(n) {
  const r = rng(20261202);
  const out = [];
  for (let i = 0; i < n; i++) {
    const k = 1 + Math.floor(r() * 9);
    let s = '';
    for (let j = 0; j < k; j++) s += PIECES[Math.floor(r() * PIECES.length)];
    out.push(s);
  }
  return out;
}

const hex = (s) => (s.length ? Buffer.from(s, 'utf8').toString('hex') : '-');

async function main() {
  const strings = CASES.concat(fixtureLines(), mixes(160));
  const out = ['# generated by tests/gen_bpe_goldens.js: ids from Rust tokenizers 0.22 ' +
               '(@anush008/tokenizers); NAME MODE TEXT DECODED N ids'];
  for (const [name, file] of TOKENIZERS) {
    const t = Tokenizer.fromFile(file);
    for (const [mode, special] of [['plain', false], ['bos', true]]) {
      const list = mode === 'plain' ? strings : strings.slice(0, 40);
      for (const s of list) {
        const e = await t.encode(s, null, { addSpecialTokens: special });
        const ids = Array.from(e.getIds());
        const d = await t.decode(ids, false);
        out.push([name, mode, hex(s), hex(d), ids.length].concat(ids).join(' '));
      }
    }
  }
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
