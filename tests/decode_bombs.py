"""Small, valid-looking JPEGs whose decode work grows with their scans (consumer/core/jpeg_scans.py), for the
decode-bound tests: a flat grey progressive JPEG with one of its scans repeated. Each repeat is a few dozen
bytes (end-of-band runs over the whole frame) and makes libjpeg walk every block of the frame again."""

import io

from PIL import Image

from consumer.core.jpeg_scans import _SCAN_END


def _segments(data: bytes) -> list[tuple[int, int, bytes | None]]:
    """(start, end, SOS header or None) of each segment after SOI, up to EOI."""
    pos, out = 2, []
    while data[pos + 1] != 0xD9:
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if data[pos + 1] == 0xDA:
            scan_end = _SCAN_END.search(data, end)
            assert scan_end is not None
            out.append((pos, scan_end.start(), data[pos + 4:end]))
            pos = scan_end.start()
        else:
            out.append((pos, end, None))
            pos = end
    return out


def scan_bomb(side: int, repeats: int, kept_by_subset: bool = True) -> bytes:
    """A `side` x `side` grey progressive JPEG with `repeats` more copies (each with its Huffman table) of a
    scan: the first AC scan (Ss = 1, Ah = 0), which the 1/8-scale subset keeps, or (`kept_by_subset` False)
    the last AC refinement scan, which the subset drops and which costs more per block."""
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    segments = _segments(data)
    for i, (_start, end, header) in enumerate(segments):
        if header is None or header[-3] == 0:
            continue
        first_ac = header[-3] == 1 and header[-1] >> 4 == 0
        if first_ac == kept_by_subset and segments[i - 1][2] is None:
            piece = data[segments[i - 1][0]:end]  # the DHT before it and the scan
            if kept_by_subset:
                break
    return data[:-2] + piece * repeats + b"\xff\xd9"
