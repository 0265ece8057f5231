"""msgpack in pieces, for blobs as large as the maps (checkpoints).

The maps are the RAM budget (DESIGN.md §6: 8 bytes per mapped MiB, of which the
arrays take 6): a checkpoint cannot be packed into one bytes object, nor decoded
from one, without holding the maps twice or three times over.

``encode`` yields the bytes of ``msgpack.packb(obj, use_bin_type=True)`` as a
sequence of buffers: binaries given as memoryviews or ``Bin`` (several arrays
packed as one binary) are yielded as they are, never copied; everything else is
packed by msgpack. The output is byte for byte what packb gives, so readers of
whole blobs read it unchanged.

``Decoder`` reads one object from a source in bounded reads. A binary of ``BIG``
bytes or more is read straight into a bytearray of its own, which callers may
wrap with numpy in place; smaller ones decode as bytes, as msgpack gives them.
Every length is checked against what is left of the blob before anything is
allocated, so a damaged blob is Corrupt, never a huge allocation.
"""

from __future__ import annotations

import struct
import zlib

import msgpack

from ..errors import Corrupt

BIG = 64 * 1024
READ_CHUNK = 256 * 1024
MAX_DEPTH = 64

_PACK = msgpack.Packer(use_bin_type=True)


class Bin:
    """One msgpack binary made of several buffers, packed as if they were joined."""

    def __init__(self, parts):
        self.parts = [memoryview(p).cast("B") for p in parts]
        self.nbytes = sum(len(p) for p in self.parts)


def encode(obj):
    """Yields the bytes of ``obj`` packed as msgpack, in pieces."""
    if isinstance(obj, dict):
        yield _PACK.pack_map_header(len(obj))
        for k, v in obj.items():
            yield from encode(k)
            yield from encode(v)
    elif isinstance(obj, (list, tuple)):
        yield _PACK.pack_array_header(len(obj))
        for v in obj:
            yield from encode(v)
    elif isinstance(obj, (Bin, memoryview)):
        b = obj if isinstance(obj, Bin) else Bin([obj])
        n = b.nbytes
        if n < 1 << 8:
            yield struct.pack(">BB", 0xC4, n)
        elif n < 1 << 16:
            yield struct.pack(">BH", 0xC5, n)
        else:
            yield struct.pack(">BI", 0xC6, n)
        yield from b.parts
    else:
        yield _PACK.pack(obj)


# msgpack type bytes that are followed by a fixed-size big-endian number
_NUMBERS = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
            0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
# type byte -> (size of its length field, what follows)
_SIZED = {0xC4: (1, "bin"), 0xC5: (2, "bin"), 0xC6: (4, "bin"),
          0xD9: (1, "str"), 0xDA: (2, "str"), 0xDB: (4, "str"),
          0xDC: (2, "array"), 0xDD: (4, "array"), 0xDE: (2, "map"), 0xDF: (4, "map")}
_LEN = {1: ">B", 2: ">H", 4: ">I"}


class Decoder:
    """Decodes msgpack from ``readinto(buf)`` (fills ``buf`` with the source's next
    bytes) over ``length`` bytes, keeping a crc32 of everything read."""

    def __init__(self, readinto, length: int, what: str = "blob"):
        self._readinto = readinto
        self.what = what
        self.unread = length          # bytes of the source not yet read
        self.crc = 0
        self._buf = bytearray(min(READ_CHUNK, length))
        self._mv = memoryview(self._buf)
        self._pos = self._end = 0

    def left(self) -> int:
        return self.unread + self._end - self._pos

    def _fetch(self, n: int) -> memoryview:
        """The next ``n`` (<= READ_CHUNK) bytes, from the buffer."""
        if n > self.left():
            raise Corrupt(f"{self.what}: ends inside an object")
        if self._end - self._pos < n:
            rest = self._end - self._pos
            self._mv[:rest] = self._mv[self._pos:self._end]
            k = min(len(self._buf) - rest, self.unread)
            self._read(self._mv[rest:rest + k])
            self._pos, self._end = 0, rest + k
        out = self._mv[self._pos:self._pos + n]
        self._pos += n
        return out

    def _read(self, mv: memoryview) -> None:
        self._readinto(mv)
        self.unread -= len(mv)
        self.crc = zlib.crc32(mv, self.crc)

    def _binary(self, n: int):
        if n > self.left():
            raise Corrupt(f"{self.what}: a {n}-byte binary runs past its end")
        if n < BIG:
            return bytes(self._fetch(n))
        out = bytearray(n)
        mv = memoryview(out)
        have = min(n, self._end - self._pos)
        mv[:have] = self._mv[self._pos:self._pos + have]
        self._pos += have
        if have < n:
            self._read(mv[have:])
        return out

    def _count(self, n: int) -> int:
        if n > self.left():         # every element takes at least one byte
            raise Corrupt(f"{self.what}: {n} elements cannot fit in what is left")
        return n

    def value(self, depth: int = 0):
        """The next object."""
        if depth > MAX_DEPTH:
            raise Corrupt(f"{self.what}: nested deeper than {MAX_DEPTH}")
        t = self._fetch(1)[0]
        if t <= 0x7F:
            return t
        if t >= 0xE0:
            return t - 0x100
        if t <= 0x8F:
            return self._map(t & 0x0F, depth)
        if t <= 0x9F:
            return self._array(t & 0x0F, depth)
        if t <= 0xBF:
            return self._str(t & 0x1F)
        if t in (0xC0, 0xC2, 0xC3):
            return None if t == 0xC0 else t == 0xC3
        if t in _NUMBERS:
            fmt = _NUMBERS[t]
            return struct.unpack(fmt, self._fetch(struct.calcsize(fmt)))[0]
        if t in _SIZED:
            k, kind = _SIZED[t]
            n = struct.unpack(_LEN[k], self._fetch(k))[0]
            if kind == "bin":
                return self._binary(n)
            if kind == "str":
                return self._str(n)
            return self._array(n, depth) if kind == "array" else self._map(n, depth)
        raise Corrupt(f"{self.what}: unexpected msgpack type 0x{t:02x}")

    def _str(self, n: int) -> str:
        try:
            return bytes(self._binary(n)).decode("utf-8")
        except UnicodeDecodeError:
            raise Corrupt(f"{self.what}: a string that is not UTF-8") from None

    def _array(self, n: int, depth: int) -> list:
        return [self.value(depth + 1) for _ in range(self._count(n))]

    def _map(self, n: int, depth: int) -> dict:
        out = {}
        for _ in range(self._count(n)):
            k, v = self.value(depth + 1), self.value(depth + 1)
            try:
                out[k] = v
            except TypeError:
                raise Corrupt(f"{self.what}: a map key of type {type(k).__name__}") from None
        return out

    def drain(self) -> None:
        """Reads what is left of the source (for its crc), decoding nothing."""
        self._pos = self._end = 0
        while self.unread:
            self._read(self._mv[:min(self.unread, len(self._mv))])

    def whole(self):
        """The one object the source holds: Corrupt if bytes follow it."""
        obj = self.value()
        if self.left():
            raise Corrupt(f"{self.what}: {self.left()} bytes after its end")
        return obj
