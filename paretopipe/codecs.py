"""Codecs for the tensor that crosses a split: what travels instead of the raw float32 bytes.

A codec name is a *base* with an optional lossless *entropy stage* on top:

- ``none``: the raw bytes (the default; zero-copy, as before codecs existed);
- ``fp16`` / ``bf16``: each element rounded to half precision (2 bytes);
- ``int8``: per-tensor affine quantization: ``q = clamp(round(x / scale) + zero_point, -128, 127)``,
  with ``scale = (max - min) / 255`` over the tensor's range widened to include 0 (so 0 is exact)
  and ``zero_point`` chosen so that ``min`` maps to -128. Scale (f64) and zero point (i32) travel
  in the frame header; the receiver computes ``x ≈ (q - zero_point) * scale``. The error of every
  element is at most ``scale / 2``.
- ``+zstd`` (zstandard, level 1) or ``+lz4`` (LZ4 block format): compress the base's bytes.

The public surface: :func:`parse_codec` (a name → :class:`Codec`, unknown names list the valid
ones), :func:`codec_names` / :func:`available_codecs`, and per link an :class:`Encoder` and a
:class:`Decoder`. A decoder knows the tensor it expects (shape, float32), so every size is
known before anything is allocated: a payload without entropy stage must be exactly the base's
size; a compressed one at most :meth:`Codec.max_wire_bytes`; and decompression writes into a
buffer of exactly the base's size and fails (:class:`CodecError`) if the data would make more or
less, so a small payload cannot expand into a large allocation. Nothing here pickles.
"""

from __future__ import annotations

import enum
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from paretopipe.errors import ConfigError, ProtocolError, TransportError

__all__ = [
    "Codec",
    "CodecError",
    "Decoder",
    "Encoded",
    "Encoder",
    "available_codecs",
    "codec_from_wire",
    "codec_names",
    "parse_codec",
]


class CodecError(TransportError):
    """A payload could not be encoded or decoded (corrupt, wrong size, non-finite for int8)."""


class Base(str, enum.Enum):
    NONE = "none"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"


class Entropy(str, enum.Enum):
    ZSTD = "zstd"
    LZ4 = "lz4"


# wire ids: low nibble base, high nibble entropy stage (0 = none)
_BASE_IDS = {Base.NONE: 0, Base.FP16: 1, Base.BF16: 2, Base.INT8: 3}
_ENTROPY_IDS = {None: 0, Entropy.ZSTD: 1, Entropy.LZ4: 2}
# the dtype the base's bytes hold, and its element size
_BASE_DTYPE = {Base.NONE: ("float32", 4), Base.FP16: ("float16", 2), Base.BF16: ("bfloat16", 2), Base.INT8: ("int8", 1)}
ZSTD_LEVEL = 1
# torch's fused per-tensor quantizer is one pass over the tensor (rounding, clamping and the
# int8 cast together); torch 2.14 marks its quantized-tensor constructors deprecated. The
# warning would fire on every batch, so it is silenced for that one call site's message.
warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
_INT8_LEVELS = 255


@dataclass(frozen=True)
class Codec:
    base: Base
    entropy: Entropy | None = None

    @property
    def name(self) -> str:
        return self.base.value + (f"+{self.entropy.value}" if self.entropy else "")

    def __str__(self) -> str:
        return self.name

    @property
    def wire_id(self) -> int:
        return _BASE_IDS[self.base] | (_ENTROPY_IDS[self.entropy] << 4)

    @property
    def lossy(self) -> bool:
        return self.base is not Base.NONE

    @property
    def base_dtype(self) -> str:
        return _BASE_DTYPE[self.base][0]

    def base_nbytes(self, numel: int) -> int:
        """Bytes of the base's encoding of `numel` float32 elements (before any entropy stage)."""
        return numel * _BASE_DTYPE[self.base][1]

    def max_wire_bytes(self, numel: int) -> int:
        """The most bytes a frame of this codec may declare for `numel` elements: the base's size,
        or the entropy coder's worst-case bound on it (incompressible data grows a little)."""
        n = self.base_nbytes(numel)
        if self.entropy is Entropy.ZSTD:
            return n + (n >> 8) + 512  # ZSTD_compressBound (n + n/256 + a margin) plus the frame header
        if self.entropy is Entropy.LZ4:
            return n + n // 255 + 16  # LZ4_COMPRESSBOUND
        return n


NONE = Codec(Base.NONE)


def codec_names() -> list[str]:
    """Every codec this version knows, in order (base, then +zstd, +lz4)."""
    return [Codec(b, e).name for b in Base for e in (None, *Entropy)]


def _entropy_available(entropy: Entropy | None) -> str | None:
    """None when the entropy stage's library imports, else why not."""
    if entropy is None:
        return None
    module = {Entropy.ZSTD: "zstandard", Entropy.LZ4: "lz4.block"}[entropy]
    try:
        __import__(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); `pip install zstandard lz4`"
    return None


def available_codecs() -> list[str]:
    """The codecs this installation can encode and decode (the entropy libraries import)."""
    return [n for n in codec_names() if _entropy_available(parse_codec(n).entropy) is None]


def parse_codec(text: str) -> Codec:
    """``int8+zstd`` → Codec. An unknown name is a ConfigError listing the valid ones."""
    name = str(text).strip().lower()
    base_text, plus, entropy_text = name.partition("+")
    try:
        if plus and not entropy_text:
            raise ValueError(name)
        base = Base(base_text)
        entropy = Entropy(entropy_text) if entropy_text else None
    except ValueError:
        raise ConfigError(f"unknown codec {text!r} (valid: {', '.join(codec_names())})") from None
    return Codec(base, entropy)


def parse_codec_list(text: str | Sequence[str]) -> tuple[Codec, ...]:
    """``none,int8+lz4`` (or a sequence of names) → codecs, each checked; duplicates dropped."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[Codec] = []
    for item in items:
        if item.strip():
            codec = parse_codec(item)
            if codec not in out:
                out.append(codec)
    if not out:
        raise ConfigError(f"no codec given (valid: {', '.join(codec_names())})")
    return tuple(out)


def require_available(codec: Codec) -> None:
    why = _entropy_available(codec.entropy)
    if why:
        raise ConfigError(f"codec {codec.name} cannot run here: {why}")


def codec_from_wire(wire_id: int) -> Codec:
    bases = {v: k for k, v in _BASE_IDS.items()}
    entropies = {v: k for k, v in _ENTROPY_IDS.items()}
    base, entropy = bases.get(wire_id & 0x0F), entropies.get(wire_id >> 4, ...)
    if base is None or entropy is ...:
        raise ProtocolError(f"unknown codec id {wire_id} in a frame header")
    return Codec(base, entropy)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- int8 parameters


def int8_params(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of the int8 affine code for values in [lo, hi] (0 always included)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = hi - lo
    scale = span / _INT8_LEVELS if span > 0 else 1.0
    zero_point = int(round(-128 - lo / scale))
    return scale, max(-128, min(127, zero_point))


# --------------------------------------------------------------------------- encode


def _quantize(tensor: Any, scale: float, zero_point: int) -> Any:
    """int8 codes ``clamp(round(x / scale) + zero_point, -128, 127)``."""
    import torch

    if hasattr(torch, "quantize_per_tensor"):
        return torch.quantize_per_tensor(tensor, scale, zero_point, torch.qint8).int_repr()
    # the same codes without the fused kernel (several passes), for a torch that dropped it
    return tensor.mul(1.0 / scale).round_().add_(zero_point).clamp_(-128, 127).to(torch.int8)


@dataclass(frozen=True)
class Encoded:
    """One tensor, encoded. `payload` stays valid until the encoder's next call."""

    codec: Codec
    payload: memoryview
    raw_bytes: int
    scale: float
    zero_point: int
    encode_s: float

    @property
    def wire_bytes(self) -> int:
        return len(self.payload)


def _bytes_of(tensor: Any) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    import torch

    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


class Encoder:
    """Encodes the tensors one link sends. Not thread-safe: one per sending thread/link."""

    def __init__(self, codec: Codec) -> None:
        require_available(codec)
        self.codec = codec
        self._keep: Any = None  # the last payload's owner, alive until the next call
        self._zstd: Any = None
        if codec.entropy is Entropy.ZSTD:
            import zstandard

            self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)

    def encode(self, tensor: Any) -> Encoded:
        """`tensor`: a contiguous float32 CPU tensor."""
        import torch

        t0 = time.perf_counter()
        codec = self.codec
        raw = tensor.nelement() * tensor.element_size()
        scale, zero_point = 1.0, 0
        if codec.base is Base.NONE:
            coded = tensor
        elif codec.base is Base.FP16:
            coded = tensor.to(torch.float16)
        elif codec.base is Base.BF16:
            coded = tensor.to(torch.bfloat16)
        else:
            lo, hi = torch.aminmax(tensor)
            lo_f, hi_f = float(lo), float(hi)
            if not (math.isfinite(lo_f) and math.isfinite(hi_f)):
                raise CodecError(f"int8 cannot encode a tensor holding non-finite values (range {lo_f}..{hi_f})")
            scale, zero_point = int8_params(lo_f, hi_f)
            coded = _quantize(tensor, scale, zero_point)
        view = _bytes_of(coded)
        owner: Any = coded
        if codec.entropy is Entropy.ZSTD:
            owner = self._zstd.compress(view)
            view = memoryview(owner)
        elif codec.entropy is Entropy.LZ4:
            import lz4.block

            owner = lz4.block.compress(view, store_size=False)
            view = memoryview(owner)
        self._keep = owner
        return Encoded(codec, view, raw, scale, zero_point, time.perf_counter() - t0)


# --------------------------------------------------------------------------- decode


class Decoder:
    """Decodes the payloads one link receives, for one expected float32 tensor shape."""

    def __init__(self, codec: Codec, shape: Sequence[int]) -> None:
        require_available(codec)
        self.codec = codec
        self.shape = tuple(int(d) for d in shape)
        self.numel = math.prod(self.shape)
        self.raw_bytes = self.numel * 4
        self.base_bytes = codec.base_nbytes(self.numel)
        self.max_wire_bytes = codec.max_wire_bytes(self.numel)
        self._staging: Any = None  # receive buffer for payloads that are not the raw tensor
        self._base: Any = None  # decompressed base bytes (when base is not none)
        self._zstd: Any = None
        if codec.entropy is Entropy.ZSTD:
            import zstandard

            self._zstd = zstandard.ZstdDecompressor()

    @property
    def direct(self) -> bool:
        """True when the payload *is* the raw tensor: receive it straight into the output."""
        return self.codec.base is Base.NONE and self.codec.entropy is None

    def check_length(self, length: int) -> None:
        """Before receiving: a declared payload length this codec cannot produce is refused."""
        if self.codec.entropy is None:
            if length != self.base_bytes:
                raise ProtocolError(f"{self.codec.name} payload of {length} bytes for {self.numel} elements "
                                    f"(expected exactly {self.base_bytes})")
        elif not 0 < length <= self.max_wire_bytes:
            raise ProtocolError(f"{self.codec.name} payload of {length} bytes for {self.numel} elements "
                                f"(at most {self.max_wire_bytes})")

    def check_params(self, scale: float, zero_point: int) -> None:
        if self.codec.base is Base.INT8 and not (math.isfinite(scale) and scale > 0 and -128 <= zero_point <= 127):
            raise ProtocolError(f"int8 frame with scale {scale} and zero point {zero_point} "
                                f"(scale must be finite and > 0, zero point within -128..127)")

    def staging(self, length: int) -> memoryview:
        """A buffer of `length` bytes (already checked) to receive a non-direct payload into."""
        import torch

        if self._staging is None:
            self._staging = torch.empty(self.max_wire_bytes, dtype=torch.uint8)
        return _bytes_of(self._staging)[:length]

    def _base_buffer(self) -> Any:
        import torch

        if self._base is None:
            self._base = torch.empty(self.numel, dtype=getattr(torch, self.codec.base_dtype))
        return self._base

    def decode(self, payload: memoryview, scale: float, zero_point: int, out: Any) -> float:
        """Decode `payload` into `out` (a float32 tensor of the expected shape). Returns the
        seconds it took. A payload that does not decode to exactly the expected size, or whose
        entropy stage is corrupt, raises CodecError."""
        import torch

        t0 = time.perf_counter()
        codec = self.codec
        self.check_params(scale, zero_point)
        if codec.base is Base.NONE:
            target = out.reshape(-1)
        else:
            target = self._base_buffer()
        if codec.entropy is None:
            coded = torch.frombuffer(payload, dtype=target.dtype) if codec.base is not Base.NONE else None
            if coded is None:
                _bytes_of(target)[:] = payload
                coded = target
        else:
            self._inflate(payload, _bytes_of(target))
            coded = target
        if codec.base is Base.INT8:
            flat = out.view(-1)
            flat.copy_(coded)
            flat.sub_(zero_point).mul_(scale)
        elif codec.base is not Base.NONE:
            out.view(-1).copy_(coded)
        return time.perf_counter() - t0

    def _inflate(self, payload: memoryview, target: memoryview) -> None:
        """Decompress into `target`, which must come out exactly full."""
        codec = self.codec
        want = len(target)
        if codec.entropy is Entropy.ZSTD:
            import zstandard

            try:
                reader = self._zstd.stream_reader(payload, read_across_frames=False)
                got = 0
                while got < want:
                    n = reader.readinto(target[got:])
                    if n == 0:
                        break
                    got += n
                extra = reader.read(1) if got == want else b""
            except zstandard.ZstdError as exc:
                raise CodecError(f"corrupt {codec.name} payload: {exc}") from None
            if got != want or extra:
                raise CodecError(f"corrupt {codec.name} payload: it decompresses to "
                                 f"{'more than' if extra else got} bytes, expected {want}")
        else:
            import lz4.block

            try:
                data = lz4.block.decompress(payload, uncompressed_size=want)
            except lz4.block.LZ4BlockError as exc:
                raise CodecError(f"corrupt {codec.name} payload: {exc}") from None
            if len(data) != want:
                raise CodecError(f"corrupt {codec.name} payload: it decompresses to {len(data)} bytes, expected {want}")
            target[:] = data
