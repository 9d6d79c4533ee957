"""Codecs at the split: names, round trips, error bounds, size checks before allocation."""

from __future__ import annotations

import pytest
import torch

from paretopipe.codecs import (
    Codec, CodecError, Decoder, Encoder, available_codecs, codec_from_wire, codec_names, int8_params, parse_codec,
    parse_codec_list,
)
from paretopipe.errors import ConfigError
from paretopipe.transport.wire import ProtocolError

SHAPE = (2, 16, 12, 12)


def _activation(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(SHAPE, generator=g) * 2.0).relu_()  # post-ReLU, as at most block boundaries


def _roundtrip(name: str, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    codec = parse_codec(name)
    enc = Encoder(codec).encode(x)
    dec = Decoder(codec, x.shape)
    dec.check_length(enc.wire_bytes)
    out = torch.empty_like(x)
    if dec.direct:
        memoryview(out.numpy()).cast("B")[:] = enc.payload
    else:
        staging = dec.staging(enc.wire_bytes)
        staging[:] = enc.payload
        dec.decode(staging, enc.scale, enc.zero_point, out)
    return out, enc.wire_bytes


def test_names_parse_and_unknown_lists_valid():
    assert codec_names()[:3] == ["none", "none+zstd", "none+lz4"] and len(codec_names()) == 12
    assert parse_codec("INT8+zstd").name == "int8+zstd"
    assert set(available_codecs()) == set(codec_names())  # zstandard and lz4 are dependencies
    for bad in ("int4", "int8+gzip", "fp16+"):
        with pytest.raises(ConfigError, match=r"unknown codec .* \(valid: none, none\+zstd, .*int8\+lz4\)"):
            parse_codec(bad)
    assert [c.name for c in parse_codec_list("none, int8,none")] == ["none", "int8"]
    with pytest.raises(ConfigError, match="no codec given"):
        parse_codec_list(" , ")


def test_wire_ids_round_trip_and_unknown_is_a_protocol_error():
    ids = {parse_codec(n).wire_id for n in codec_names()}
    assert len(ids) == 12 and parse_codec("none").wire_id == 0
    for n in codec_names():
        assert codec_from_wire(parse_codec(n).wire_id) == parse_codec(n)
    with pytest.raises(ProtocolError, match="unknown codec id"):
        codec_from_wire(0x37)


@pytest.mark.parametrize("name", codec_names())
def test_round_trip_within_the_codec_bound(name):
    x = _activation()
    out, wire = _roundtrip(name, x)
    codec = parse_codec(name)
    err = float((out - x).abs().max())
    if codec.base.value == "none":
        assert torch.equal(out, x)
    elif codec.base.value == "int8":
        scale, _ = int8_params(float(x.min()), float(x.max()))
        assert err <= scale / 2 * 1.001 and scale > 0
    else:
        rel = 2.0 ** (-11 if codec.base.value == "fp16" else -8)
        assert err <= float(x.abs().max()) * rel
    if codec.entropy is None:
        assert wire == codec.base_nbytes(x.numel())
    assert wire <= codec.max_wire_bytes(x.numel())


def test_int8_params_keep_zero_exact_and_cover_the_range():
    scale, zp = int8_params(0.0, 25.5)
    assert scale == pytest.approx(0.1) and zp == -128
    scale, zp = int8_params(-1.0, 1.0)
    assert -128 <= zp <= 127 and round(-1.0 / scale) + zp == -128
    x = torch.tensor([0.0, 0.0, 5.0, 10.0])  # zeros (ReLU) must decode to exactly zero
    out, _ = _roundtrip("int8", x)
    assert out[0] == 0.0 and out[1] == 0.0
    constant = torch.zeros(8)
    out, _ = _roundtrip("int8", constant)
    assert torch.equal(out, constant)


def test_int8_refuses_non_finite_values():
    with pytest.raises(CodecError, match="non-finite"):
        Encoder(parse_codec("int8")).encode(torch.tensor([1.0, float("inf")]))


def test_compressible_tensors_shrink_with_entropy_stage():
    x = torch.zeros(SHAPE)
    x[:, :2] = 1.5  # mostly zeros: what ReLU activations look like
    for name in ("none+zstd", "none+lz4", "int8+zstd", "int8+lz4"):
        _, wire = _roundtrip(name, x)
        assert wire < parse_codec(name).base_nbytes(x.numel()) / 4


def test_declared_sizes_are_checked_before_anything_is_received():
    numel = 1000
    for name in ("none", "fp16", "int8"):
        dec = Decoder(parse_codec(name), (numel,))
        dec.check_length(parse_codec(name).base_nbytes(numel))
        with pytest.raises(ProtocolError, match="expected exactly"):
            dec.check_length(parse_codec(name).base_nbytes(numel) + 1)
    dec = Decoder(parse_codec("int8+zstd"), (numel,))
    with pytest.raises(ProtocolError, match="at most"):
        dec.check_length(dec.max_wire_bytes + 1)
    with pytest.raises(ProtocolError, match="at most"):
        dec.check_length(0)
    with pytest.raises(ProtocolError, match="scale must be finite"):
        dec.check_params(float("nan"), 0)
    with pytest.raises(ProtocolError, match="zero point within"):
        dec.check_params(0.1, 300)


@pytest.mark.parametrize("name", ["none+zstd", "int8+zstd", "fp16+lz4", "int8+lz4"])
def test_corrupt_or_bomb_payloads_are_codec_errors(name):
    codec = parse_codec(name)
    x = _activation()
    dec = Decoder(codec, x.shape)
    out = torch.empty_like(x)
    enc = Encoder(codec).encode(x)
    # garbage of a plausible length
    junk = bytes(range(256)) * (enc.wire_bytes // 256 + 1)
    staging = dec.staging(enc.wire_bytes)
    staging[:] = junk[: enc.wire_bytes]
    with pytest.raises(CodecError, match=f"corrupt {name.replace('+', '[+]')} payload"):
        dec.decode(staging, enc.scale, enc.zero_point, out)
    # a valid stream of a *larger* tensor (a decompression bomb): refused, not allocated
    big = Encoder(codec).encode(torch.zeros(x.numel() * 64))
    assert big.wire_bytes <= dec.max_wire_bytes
    staging = dec.staging(big.wire_bytes)
    staging[:] = big.payload
    with pytest.raises(CodecError, match="corrupt"):
        dec.decode(staging, big.scale, big.zero_point, out)
    # and a truncated one
    staging = dec.staging(enc.wire_bytes // 2)
    staging[:] = enc.payload[: enc.wire_bytes // 2]
    with pytest.raises(CodecError, match="corrupt"):
        dec.decode(staging, enc.scale, enc.zero_point, out)


def test_codec_is_frozen_and_named():
    c = Codec(parse_codec("bf16").base)
    assert str(c) == "bf16" and c.lossy and not parse_codec("none+lz4").lossy


def test_int8_fallback_gives_the_fused_quantizers_codes(monkeypatch):
    """The plain-math path (for a torch without quantize_per_tensor) must produce the same codes."""
    from paretopipe import codecs

    gen = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(50_000, generator=gen) * 4, torch.tensor([0.0, -7.5, 7.5])])
    scale, zp = int8_params(float(x.min()), float(x.max()))
    # values that sit exactly half a step from a code test the rounding rule too
    halves = (torch.arange(-128, 127, dtype=torch.float32) - zp + 0.5) * scale
    x = torch.cat([x, halves])
    fused = codecs._quantize(x, scale, zp)
    monkeypatch.delattr(torch, "quantize_per_tensor")
    plain = codecs._quantize(x, scale, zp)
    assert plain.dtype == fused.dtype == torch.int8
    assert torch.equal(plain, fused)
