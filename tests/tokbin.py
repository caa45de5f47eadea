"""Reader of llama2.c's tokenizer.bin (int32 max_token_length, then per token: float32 score,
int32 byte length, the bytes), shared by the scripts in tests/ that build goldens from it.
Standard library only."""
import struct


def read_tokenizer_bin(path):
    """The file's tokens in id order, as (raw bytes, score) pairs."""
    data = open(path, "rb").read()
    off = 4
    pieces = []
    while off < len(data):
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        pieces.append((data[off:off + n], score))
        off += n
    return pieces
