"""Codec throughput: encode + decode of a 6 MB float32 activation, per codec, against a plain copy.

Goal (issue 16): int8 encode + decode at >= 1 GB/s of raw activation on this machine's CPU.
Prints MB/s of raw bytes, the ratio to a plain memory copy of the same tensor, and the size ratio.
Run: .venv/bin/python benchmarks/bench_codecs.py [--repeats N]
"""

from __future__ import annotations

import argparse
import time

import torch

from paretopipe.codecs import Decoder, Encoder, codec_names, parse_codec

GOAL_GB_S = 1.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    # a ReLU6 activation of MobileNetV2 style: non-negative, many zeros; 6 MiB of float32
    x = (torch.randn(8, 24, 88, 93, generator=torch.Generator().manual_seed(0)) * 2).clamp_(0, 6).contiguous()
    raw = x.nelement() * 4
    out = torch.empty_like(x)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    copy_s = best(lambda: out.copy_(x))
    print(f"threads {torch.get_num_threads()}, tensor {tuple(x.shape)} = {raw / 2**20:.2f} MiB; "
          f"plain copy {raw / copy_s / 1e9:.2f} GB/s")
    print(f"{'codec':<11} {'ratio':>6} {'enc+dec GB/s':>13} {'vs copy':>8}")
    for name in codec_names():
        codec = parse_codec(name)
        enc, dec = Encoder(codec), Decoder(codec, x.shape)
        e = enc.encode(x)
        staging = dec.staging(e.wire_bytes)

        def roundtrip() -> None:
            e = enc.encode(x)
            if dec.direct:
                memoryview(out.numpy()).cast("B")[:] = e.payload
            else:
                view = dec.staging(e.wire_bytes)
                view[:] = e.payload
                dec.decode(view, e.scale, e.zero_point, out)

        del staging
        s = best(roundtrip)
        print(f"{name:<11} {raw / e.wire_bytes:>6.2f} {raw / s / 1e9:>13.2f} {copy_s / s:>8.2f}")
        if name == "int8":
            print(f"  int8 goal >= {GOAL_GB_S} GB/s: {raw / s / 1e9:.2f} GB/s "
                  f"({raw / s / 1e9 / GOAL_GB_S:.2f}x the goal)")


if __name__ == "__main__":
    main()
