"""SSEDecoder: the same payloads however the byte stream is split."""

from __future__ import annotations

import itertools

import pytest

from interference.providers.sse import SSEDecoder

STREAM = (
    "\ufeff: keep-alive comment\n"
    'data: {"a": 1}\n\n'
    "event: message\r\n"
    'data: {"b": "caf\u00e9 \u2713 \U0001f600"}\r\n\r\n'
    "id: 7\r"
    "data: first line\r"
    "data:second line\r"
    "retry: 100\r\r"
    "data\n\n"
    "data:  two spaces\n\n"
    "\n\n"
    "datafoo: another field\n"
    "data : not data either\n"
    "data: [DONE]\n\n"
).encode()

EXPECTED = [
    '{"a": 1}',
    '{"b": "caf\u00e9 \u2713 \U0001f600"}',
    "first line\nsecond line",
    "",
    " two spaces",
    "[DONE]",
]


def decode_in_pieces(data: bytes, cuts: tuple[int, ...]) -> list[str]:
    decoder = SSEDecoder()
    out: list[str] = []
    bounds = (0, *cuts, len(data))
    for start, end in itertools.pairwise(bounds):
        out.extend(decoder.decode(data[start:end]))
    return out + decoder.flush()


def test_whole_stream() -> None:
    assert decode_in_pieces(STREAM, ()) == EXPECTED


def test_every_single_split_point() -> None:
    for cut in range(len(STREAM) + 1):
        assert decode_in_pieces(STREAM, (cut,)) == EXPECTED, cut


def test_every_pair_of_split_points() -> None:
    for first in range(len(STREAM) + 1):
        for second in range(first, len(STREAM) + 1):
            assert decode_in_pieces(STREAM, (first, second)) == EXPECTED, (first, second)


def test_byte_by_byte() -> None:
    assert decode_in_pieces(STREAM, tuple(range(1, len(STREAM)))) == EXPECTED


def test_events_come_out_as_soon_as_they_end() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b'data: {"x"') == []
    assert decoder.decode(b": 1}\n") == []
    assert decoder.decode(b"\n") == ['{"x": 1}']
    # A trailing CR may be the first half of CRLF, so the blank line it might end is held back...
    assert decoder.decode(b"data: y\r\r") == []
    # ...and a following LF completes that CRLF: one blank line, one event.
    assert decoder.decode(b"\ndata: z\n\n") == ["y", "z"]


def test_lone_cr_line_endings() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: a\r\rdata: b\r") == ["a"]
    assert decoder.decode(b"\r") == []  # still ambiguous
    assert decoder.decode(b"data: c\r\r") == ["b"]
    assert decoder.flush() == ["c"]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (b"data: [DONE]", ["[DONE]"]),
        (b"data: [DONE]\n", ["[DONE]"]),
        (b"data: [DONE]\r", ["[DONE]"]),
        (b": only a comment", []),
        (b"", []),
    ],
)
def test_flush_completes_an_unterminated_event(tail: bytes, expected: list[str]) -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: x\n\n" + tail) == ["x"]
    assert decoder.flush() == expected
    assert decoder.flush() == []


def test_bom_only_at_the_start() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"\xef\xbb") == []
    assert decoder.decode(b"\xbfdata: a\n\n") == ["a"]
    assert decoder.decode(b"\xef\xbb\xbfdata: b\n\n") == []  # not a data line once the stream started


def test_garbage_is_returned_not_interpreted() -> None:
    decoder = SSEDecoder()
    assert decoder.decode(b"data: {not json\n\nHTTP/1.1 200 OK\n\n\xff\xfe\n") == ["{not json"]
    assert decoder.decode(b"data: \xff\n\n") == ["\ufffd"]
