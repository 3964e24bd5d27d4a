"""Drop the scans of a progressive JPEG that a 1/8-scale decode never uses, so libjpeg does not decode them.

At 1/8 DCT scale libjpeg-turbo reconstructs each full-resolution component from its DC coefficient alone
(a 1x1 IDCT), but it still entropy-decodes every scan of a progressive file first: for the shipped memes
(all progressive) that is most of a miss's CPU (bench/results/decode.json). This keeps:

- every scan with Ss = 0 (the DC scans and their refinements);
- every scan of a subsampled component (e.g. 4:2:0 chroma: libjpeg scales it with a 2x2 IDCT instead of
  upsampling, which reads its first AC coefficients);
- the first AC scan (Ss = 1, Ah = 0) of the other components: without any AC coefficient libjpeg-turbo's
  block smoothing also smooths the DC (its "DC-only" preview), which changes the picture. With it, smoothing
  touches only AC coefficients, which the 1x1 IDCT ignores;

and every other segment (tables, restart interval, APPn/EXIF). The result decodes to the same pixels as the
whole file at 1/8 scale (tests/test_jpeg_scans.py holds it to that on the shipped memes). Anything this
parser does not recognise returns None and the caller decodes the whole file.
"""

import re

_SOF2 = 0xC2  # progressive, Huffman: the only frame type handled
_OTHER_SOF = {0xC0, 0xC1, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOS, _EOI = 0xDA, 0xD9


def dc_scale_subset(data: bytes) -> bytes | None:
    """The progressive JPEG `data` with only the scans a 1/8-scale decode reads (module docstring), or None
    when `data` is not a progressive JPEG this parser follows to its end."""
    if data[:2] != b"\xff\xd8":
        return None
    kept, pos, n = [b"\xff\xd8"], 2, len(data)
    subsampled: set[int] | None = None  # component ids, known once the SOF2 segment is read
    while True:
        if pos + 2 > n or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == _EOI:
            break
        if pos + 4 > n:
            return None
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end <= pos + 3 or end > n or marker in _OTHER_SOF:
            return None
        if marker == _SOF2:
            subsampled = _subsampled_components(data[pos + 4:end])
            if subsampled is None:
                return None
        if marker != _SOS:
            kept.append(data[pos:end])
            pos = end
            continue
        if subsampled is None:
            return None
        scan_end = _entropy_end(data, end)
        header = data[pos + 4:end]
        if scan_end is None or not header or len(header) != 1 + 2 * header[0] + 3:
            return None
        components = set(header[1:1 + 2 * header[0]:2])
        ss, ah = header[-3], header[-1] >> 4
        if ss == 0 or components & subsampled or (ss == 1 and ah == 0):
            kept.append(data[pos:scan_end])
        pos = scan_end
    if subsampled is None:
        return None
    kept.append(b"\xff\xd9")
    return b"".join(kept)


def _subsampled_components(sof: bytes) -> set[int] | None:
    """Ids of the components sampled below the frame's maximum, from a SOF segment's body."""
    if len(sof) < 6 or len(sof) != 6 + 3 * sof[5] or sof[5] == 0:
        return None
    factors = {sof[6 + 3 * i]: sof[7 + 3 * i] for i in range(sof[5])}
    h_max = max(f >> 4 for f in factors.values())
    v_max = max(f & 0x0F for f in factors.values())
    return {c for c, f in factors.items() if f >> 4 < h_max or f & 0x0F < v_max}


# The marker that ends a scan's entropy-coded data: 0xFF followed by anything but a stuffed 0x00, a restart
# marker 0xD0..D7 (both inside the scan) or another 0xFF (a fill byte: the marker starts at the last 0xFF).
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _entropy_end(data: bytes, pos: int) -> int | None:
    """Offset of the marker that ends the entropy-coded data starting at `pos`, or None when the data runs
    out first."""
    found = _SCAN_END.search(data, pos)
    return None if found is None else found.start()
