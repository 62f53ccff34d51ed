#!/usr/bin/env python3
"""Writes the fuzz target's seed corpus (corpus/): one input per call, each a call cubn accepts
(so that the fuzzer starts past the argument checks) or rejects for one reason. The byte layout
is c_abi_fuzz.cpp's read order. Run from anywhere: python3 tests/fuzz/make_seeds.py"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def ptr(offset):  # mode 1 (present), 16-bit offset into the pool
    return bytes([1]) + struct.pack("<H", offset)


NULL = bytes([0, 0, 0])


def seed(call, dtype=2, order=0, dims=(2, 3, 2, 2), residual=False, dz=False, activation=0,
         ws_mode=0, reserve=False, record=False, ranks=1, epsilon=0, momentum=(0, 0),
         accumulate=0, lengths=None):
    rank = len(dims)
    out = bytes([call, dtype, order, rank])
    out += bytes(d for d in dims) + bytes(5 - rank)
    out += ptr(0) + ptr(4096) + ptr(8192) + ptr(12288)  # x, y, dy, dx
    out += ptr(20480) if residual else NULL
    out += ptr(24576) if dz else NULL
    for i in range(8):  # scale, offset, running, saved, dscale, doffset
        out += ptr(16384 + 256 * i)
    out += bytes([activation & 0xFF])
    out += ptr(32768) + bytes([ws_mode])  # workspace, its size as cubn asks (mode 0)
    out += (ptr(28672) if reserve else NULL) + bytes([0])
    out += (ptr(49152) if record else NULL) + bytes([ranks + 1, 0]) + bytes([0])
    out += bytes([epsilon, momentum[0], momentum[1], accumulate])
    if lengths is not None:  # (cubn_length_type, cubn_padding): N lengths at 61440
        out += bytes(lengths) + ptr(61440)
    return out


SEEDS = {
    "forward_training": seed(0),
    "forward_training_nhwc_fp16": seed(0, dtype=0, order=1, dims=(3, 4, 3, 2)),
    "forward_training_relu_residual": seed(0, activation=1, residual=True, reserve=True),
    "forward_training_silu_fp64": seed(0, dtype=3, activation=2, reserve=True),
    "forward_inference_bf16": seed(1, dtype=1, dims=(2, 5, 7)),
    "backward_training": seed(4),
    "backward_training_relu_dz": seed(4, activation=1, residual=True, dz=True, reserve=True),
    "backward_frozen": seed(5, dims=(4, 2)),
    "forward_local": seed(6, record=True),
    "forward_local_empty_rank": seed(6, dims=(0, 3, 2, 2), record=True),
    "forward_apply_two_ranks": seed(7, record=True, ranks=2),
    "backward_local": seed(9, record=True),
    "backward_apply": seed(10, record=True),
    "bad_epsilon": seed(0, epsilon=3),
    "bad_momentum": seed(0, momentum=(4, 0)),
    "small_workspace": seed(0, ws_mode=1),
    "five_dims": seed(0, dims=(2, 3, 2, 2, 2)),
    "reserve_size": seed(8, activation=2),
    # variable-length batches: the lengths are whatever the pool holds at 61440 (clamped by cubn)
    "forward_training_lengths": seed(0, dims=(3, 3, 2, 7), lengths=(0, 0)),
    "forward_training_lengths_nlc_fp16": seed(0, dtype=0, order=1, dims=(4, 5, 8),
                                              lengths=(1, 1)),
    "forward_inference_lengths": seed(1, dims=(2, 5, 7), lengths=(0, 1)),
    "backward_training_lengths": seed(4, dims=(3, 2, 6), lengths=(1, 0)),
    "backward_frozen_lengths": seed(5, dims=(3, 2, 6), lengths=(0, 0)),
    "forward_local_lengths": seed(6, dims=(3, 3, 5), record=True, lengths=(0, 0)),
    "forward_apply_lengths": seed(7, dims=(3, 3, 5), record=True, ranks=2, lengths=(1, 0)),
    "backward_local_lengths": seed(9, dims=(3, 3, 5), record=True, lengths=(0, 0)),
    "backward_apply_lengths": seed(10, dims=(3, 3, 5), record=True, lengths=(0, 1)),
}

if __name__ == "__main__":
    corpus = os.path.join(HERE, "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name, data in SEEDS.items():
        with open(os.path.join(corpus, name), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {corpus}")
