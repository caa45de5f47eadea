#!/usr/bin/env python3
"""Writes the bad inputs of the door's catalogue (tests/e2e_serve_api.sh, e2e_cli.sh) from the
real fixtures: each is a real file with one thing wrong that quantd does not support or that
cannot run. Usage: bad_inputs.py FIXTURES OUTDIR

  iq.gguf          stories260K.gguf with blk.0.attn_q.weight's type set to IQ4_NL (20)
  nan.gguf         stories260K.gguf with a NaN in token_embd.weight (only loading the
                   weights finds it: a job that passes the door and fails in its worker)
  hf-yarn/         stories260K-hf + tokenizer.bin, config.json rope_scaling of type "yarn"
  hf-shard/        stories260K-hf + tokenizer.bin and an index naming a second shard that is
                   not there
  tok-pre.json     SmolLM2's tokenizer.json with the pre-tokenizer Whitespace
  tok-norm.json    SmolLM2's tokenizer.json with the normalizer Lowercase
  noise            4 KiB of random bytes (neither text nor a known format)
"""
import json
import os
import shutil
import struct
import sys

FX, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)

# ---- GGUF: walk the header to the tensor infos ----
SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def skip_value(b, o, t):
    if t in SCALAR:
        return o + SCALAR[t]
    if t == 8:
        n, = struct.unpack_from('<Q', b, o)
        return o + 8 + n
    if t == 9:
        et, n = struct.unpack_from('<IQ', b, o)
        o += 12
        for _ in range(n):
            o = skip_value(b, o, et)
        return o
    raise ValueError('unknown GGUF value type %d' % t)


def gguf_tensors(b):
    """(alignment, data_start, {name: (offset of its type field, dims, type, data offset)})"""
    assert b[:4] == b'GGUF'
    _, nt, nkv = struct.unpack_from('<IQQ', b, 4)
    o, align = 24, 32
    for _ in range(nkv):
        n, = struct.unpack_from('<Q', b, o)
        key = b[o + 8:o + 8 + n].decode()
        o += 8 + n
        t, = struct.unpack_from('<I', b, o)
        o += 4
        if key == 'general.alignment':
            align, = struct.unpack_from('<I', b, o)
        o = skip_value(b, o, t)
    ts = {}
    for _ in range(nt):
        n, = struct.unpack_from('<Q', b, o)
        name = b[o + 8:o + 8 + n].decode()
        o += 8 + n
        nd, = struct.unpack_from('<I', b, o)
        dims = struct.unpack_from('<%dQ' % nd, b, o + 4)
        o += 4 + 8 * nd
        t, off = struct.unpack_from('<IQ', b, o)
        ts[name] = (o, dims, t, off)
        o += 12
    return align, (o + align - 1) // align * align, ts


g = bytearray(open(os.path.join(FX, 'models/stories260K.gguf'), 'rb').read())
_, start, ts = gguf_tensors(g)
iq = bytearray(g)
struct.pack_into('<I', iq, ts['blk.0.attn_q.weight'][0], 20)
open(os.path.join(OUT, 'iq.gguf'), 'wb').write(iq)
nan = bytearray(g)
assert ts['token_embd.weight'][2] == 0  # F32
struct.pack_into('<I', nan, start + ts['token_embd.weight'][3] + 4 * 100, 0x7fc00000)
open(os.path.join(OUT, 'nan.gguf'), 'wb').write(nan)

# ---- Hugging Face directories ----
HF = os.path.join(FX, 'models/stories260K-hf')


def hf_copy(name):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    shutil.copyfile(os.path.join(HF, 'model.safetensors'), os.path.join(d, 'model.safetensors'))
    shutil.copyfile(os.path.join(FX, 'models/tok512.bin'), os.path.join(d, 'tokenizer.bin'))
    return d, json.load(open(os.path.join(HF, 'config.json')))


d, cfg = hf_copy('hf-yarn')
cfg['rope_scaling'] = {'rope_type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 512}
json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'), indent=2)

d, cfg = hf_copy('hf-shard')
json.dump(cfg, open(os.path.join(d, 'config.json'), 'w'), indent=2)
st = open(os.path.join(d, 'model.safetensors'), 'rb').read()
n, = struct.unpack_from('<Q', st, 0)
names = sorted(k for k in json.loads(st[8:8 + n]) if k != '__metadata__')
wm = {k: 'model.safetensors' for k in names}
wm[names[-1]] = 'model-00002-of-00002.safetensors'
json.dump({'metadata': {'total_size': len(st)}, 'weight_map': wm},
          open(os.path.join(d, 'model.safetensors.index.json'), 'w'), indent=2)

# ---- tokenizer.json with what quantd does not run ----
tj = json.load(open(os.path.join(FX, 'tokenizers/smollm2-135m/tokenizer.json')))
t = dict(tj, pre_tokenizer={'type': 'Whitespace'})
json.dump(t, open(os.path.join(OUT, 'tok-pre.json'), 'w'))
t = dict(tj, normalizer={'type': 'Lowercase'})
json.dump(t, open(os.path.join(OUT, 'tok-norm.json'), 'w'))

open(os.path.join(OUT, 'noise'), 'wb').write(bytes((i * 7919 + 13) % 251 | 0x80 for i in range(4096)))
