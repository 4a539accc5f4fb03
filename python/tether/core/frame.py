"""Length-prefixed frames over a byte stream (``docs/wire-format.md``).

:class:`FrameDecoder` is sans-IO: feed it whatever ``recv`` returned and it returns the frames
those bytes complete::

    dec = FrameDecoder(max_frame_len=64 * 1024)
    for frame in dec.feed(chunk):
        handle(frame)

A frame header announcing more than ``max_frame_len`` bytes raises
:class:`~tether.core.errors.FrameTooLargeError` before anything is allocated for it, and the decoder
refuses further input (the stream cannot be resynchronised). The frames completed before the error
are on the exception's ``frames`` attribute.
"""

from __future__ import annotations

from tether._core import FRAME_HEADER_LEN, FrameDecoder, encode_frame, encode_frames

HEADER_LEN = FRAME_HEADER_LEN

__all__ = ["HEADER_LEN", "FrameDecoder", "encode_frame", "encode_frames"]
