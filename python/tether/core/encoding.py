"""tether's strict binary encoding for identities, attestations and credentials.

The format (``docs/identity-format.md``) is positional: each structure is a fixed sequence of
fields, every integer has a fixed width (big-endian), every variable-length field carries its
length, attribute maps are sorted by key with no duplicates, and flags are exactly 0 or 1. So
every value has exactly one encoding — it is canonical by construction — and :class:`Reader`
enforces that on input: it rejects truncation, trailing bytes, out-of-range flags, unsorted or
duplicate keys, invalid UTF-8 and lengths over each field's limit (checked before the bytes are
sliced). Every decoder also refuses an input over its structure's total size limit up front.
"""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Mapping

from tether.core.errors import EncodingError

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def to_base64url(data: bytes) -> str:
    """``data`` as unpadded base64url: the text form of tickets and identity exports."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def from_base64url(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; ValueError if it is not that."""
    if not _BASE64URL.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # binascii.Error: ValueError


def _utf8(s: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodingError(f"text {s!r} cannot be encoded as UTF-8 (lone surrogate)") from None


class Writer:
    """Builds one encoding. Limits are checked on write too, so nothing undecodable is made."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, v: int) -> Writer:
        if not 0 <= v <= 0xFF:
            raise EncodingError(f"{v} does not fit in a u8")
        self._parts.append(bytes((v,)))
        return self

    def u16(self, v: int) -> Writer:
        if not 0 <= v <= 0xFFFF:
            raise EncodingError(f"{v} does not fit in a u16")
        self._parts.append(_U16.pack(v))
        return self

    def u32(self, v: int) -> Writer:
        if not 0 <= v <= 0xFFFFFFFF:
            raise EncodingError(f"{v} does not fit in a u32")
        self._parts.append(_U32.pack(v))
        return self

    def u64(self, v: int) -> Writer:
        if not 0 <= v <= 0xFFFFFFFFFFFFFFFF:
            raise EncodingError(f"{v} does not fit in a u64")
        self._parts.append(_U64.pack(v))
        return self

    def fixed(self, data: bytes, size: int) -> Writer:
        if len(data) != size:
            raise EncodingError(f"expected exactly {size} bytes, got {len(data)}")
        self._parts.append(bytes(data))
        return self

    def flag(self, v: bool) -> Writer:
        return self.u8(1 if v else 0)

    def var(self, data: bytes, max_len: int) -> Writer:
        """u16 length, then the bytes."""
        if len(data) > max_len:
            raise EncodingError(f"{len(data)} bytes exceed the limit of {max_len}")
        self.u16(len(data))
        self._parts.append(bytes(data))
        return self

    def text(self, s: str, max_len: int, min_len: int = 0) -> Writer:
        data = _utf8(s)
        if len(data) < min_len:
            raise EncodingError(f"text of {len(data)} bytes is shorter than {min_len}")
        return self.var(data, max_len)

    def attributes(
        self, attrs: Mapping[str, str], max_count: int, key_max: int, value_max: int
    ) -> Writer:
        """u8 count, then (key, value) texts sorted by the key's UTF-8 bytes."""
        if len(attrs) > max_count:
            raise EncodingError(f"{len(attrs)} attributes exceed the limit of {max_count}")
        self.u8(len(attrs))
        for k in sorted(attrs, key=_utf8):
            self.text(k, key_max, min_len=1)
            self.text(attrs[k], value_max)
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    """Reads one encoding strictly. Call :meth:`end` when done: trailing bytes are an error."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes | bytearray | memoryview, what: str, max_size: int) -> None:
        if len(data) > max_size:
            raise EncodingError(f"{what} of {len(data)} bytes exceeds the limit of {max_size}")
        self._data = bytes(data)
        self._pos = 0
        self._what = what

    def _take(self, n: int, field: str) -> bytes:
        left = len(self._data) - self._pos
        if n > left:
            raise EncodingError(
                f"{self._what} is truncated: {field} needs {n} bytes at offset {self._pos}, "
                f"{left} left"
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    @property
    def offset(self) -> int:
        return self._pos

    def u8(self, field: str) -> int:
        return self._take(1, field)[0]

    def u16(self, field: str) -> int:
        v: int = _U16.unpack(self._take(2, field))[0]
        return v

    def u32(self, field: str) -> int:
        v: int = _U32.unpack(self._take(4, field))[0]
        return v

    def u64(self, field: str) -> int:
        v: int = _U64.unpack(self._take(8, field))[0]
        return v

    def fixed(self, size: int, field: str) -> bytes:
        return self._take(size, field)

    def flag(self, field: str) -> bool:
        v = self.u8(field)
        if v > 1:
            raise EncodingError(f"{self._what}: {field} must be 0 or 1, got {v}")
        return v == 1

    def expect(self, value: int, field: str) -> None:
        v = self.u8(field)
        if v != value:
            raise EncodingError(f"{self._what}: {field} must be {value}, got {v}")

    def var(self, max_len: int, field: str) -> bytes:
        n = self.u16(f"{field} length")
        if n > max_len:
            raise EncodingError(
                f"{self._what}: {field} of {n} bytes exceeds the limit of {max_len}"
            )
        return self._take(n, field)

    def text(self, max_len: int, field: str, min_len: int = 0) -> str:
        data = self.var(max_len, field)
        if len(data) < min_len:
            raise EncodingError(f"{self._what}: {field} is shorter than {min_len} bytes")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError(f"{self._what}: {field} is not valid UTF-8") from None

    def attributes(self, max_count: int, key_max: int, value_max: int) -> dict[str, str]:
        count = self.u8("attribute count")
        if count > max_count:
            raise EncodingError(f"{self._what}: {count} attributes exceed the limit of {max_count}")
        out: dict[str, str] = {}
        previous: bytes | None = None
        for _ in range(count):
            key = self.text(key_max, "attribute key", min_len=1)
            kb = key.encode("utf-8")
            if previous is not None and kb <= previous:
                raise EncodingError(
                    f"{self._what}: attribute keys must be sorted and unique "
                    f"({key!r} after {previous.decode('utf-8')!r})"
                )
            previous = kb
            out[key] = self.text(value_max, f"value of {key!r}")
        return out

    def end(self) -> None:
        if self._pos != len(self._data):
            raise EncodingError(
                f"{self._what} has {len(self._data) - self._pos} trailing bytes after offset "
                f"{self._pos}"
            )
