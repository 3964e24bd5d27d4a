"""Read a JPEG's markers without decoding it: how many scans libjpeg would decode (`count_scans`, for the scan
limit), and the scans of a progressive JPEG that a 1/8-scale decode never uses (`dc_scale_subset`); `walk_scans`
gives both for a progressive JPEG in one pass.

**Scan count.** Each scan of a progressive JPEG walks every block of the components it covers, however few
bytes it holds (an end-of-band run of 32767 blocks takes a few bits): a 40 KB file of tiny scans over a large
frame decodes for minutes, a 10 MB one for hours, under every size and pixel cap. `count_scans` counts the SOS
markers libjpeg would reach before the first EOI, stepping over marker segments by their declared length as
libjpeg does and over entropy-coded data to the next marker; the caller refuses a file over its limit
(`DecodePolicy.max_scans`) before anything is decoded. Normal files have 1 (baseline) to about 10 (libjpeg's
progressive script; mozjpeg and Photoshop use fewer) scans.

**DC-scale subset.** At 1/8 DCT scale libjpeg-turbo reconstructs each full-resolution component from its DC
coefficient alone (a 1x1 IDCT), but it still entropy-decodes every scan of a progressive file first: for the
shipped memes (all progressive) that is most of a miss's CPU (bench/results/decode.json). The subset keeps:

- every scan with Ss = 0 (the DC scans and their refinements);
- every scan of a subsampled component (e.g. 4:2:0 chroma: libjpeg scales it with a 2x2 IDCT instead of
  upsampling, which reads its first AC coefficients);
- the first AC scan (Ss = 1, Ah = 0) of the other components: without any AC coefficient libjpeg-turbo's
  block smoothing also smooths the DC (its "DC-only" preview: `change_dc` in jdcoefct.c), which changes the
  picture. With it, smoothing touches only AC coefficients, which the 1x1 IDCT ignores;

and every other segment (tables, restart interval, APPn/EXIF). It is used only when these conditions, which make
it decode to the same pixels as the whole file at 1/8 scale, hold (otherwise None, and the whole file decodes):

- every full-resolution component has its Ss = 1, Ah = 0 scan, and it is neither the last scan of the file nor
  of the subset: for the rows after a last scan whose data ends early libjpeg-turbo smooths with the
  coefficient state from before that scan (`last_good_iMCU_row`), which then still knows an AC coefficient,
  so it never smooths the DC in either file;
- every dropped scan would have been accepted by libjpeg (component ids of the frame, one component, a valid
  spectral band and successive approximation, a defined and well-formed Huffman table): a scan header libjpeg
  refuses makes the whole file undecodable, so its subset must not decode either.

tests/test_jpeg_scans.py holds the subset to the whole file on the shipped memes and on files built to break
each condition. What no header shows: a kept last scan whose entropy data is corrupt and ends early. libjpeg
then smooths the rows after the damage from the state before that scan, which differs between the two files
when the subset's last scan is not the file's last scan; the picture of such a damaged file may differ in
those rows (still a picture of the same file, never an error where the whole file decodes).
Anything this parser does not recognise returns None and the caller decodes the whole file.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

_SOF2 = 0xC2  # progressive, Huffman: the only frame type the subset handles
_OTHER_SOF = {0xC0, 0xC1, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_SOS, _EOI, _DHT = 0xDA, 0xD9, 0xC4
_NO_LENGTH = {0x01, *range(0xD0, 0xDA)}  # TEM, RSTn, SOI, EOI: markers without a length field


def count_scans(data: bytes, stop_after: int | None = None) -> int:
    """SOS markers libjpeg reaches in `data` before the first EOI (module docstring); counting stops once
    past `stop_after`. An upper bound: segments are stepped over only by their declared length, as libjpeg
    does, and any other byte pair 0xFF, code is taken for a marker wherever libjpeg could take it for one."""
    scans, pos = 0, 2
    while (found := _MARKER.search(data, pos)) is not None:
        at = found.start()
        code = data[at + 1]
        if code == _EOI:
            break
        if code == _SOS:
            scans += 1
            if stop_after is not None and scans > stop_after:
                break
        pos = at + 2
        if code not in _NO_LENGTH:  # its segment (for SOS the header; its entropy data follows) is stepped over
            pos += max(2, int.from_bytes(data[at + 2:at + 4], "big"))
    return scans


@dataclass(frozen=True)
class ScanWalk:
    """A progressive JPEG followed marker by marker to its EOI, or until it had more than `stop_after` scans."""

    scans: int  # SOS segments walked: all of them, or stop_after + 1 where the walk stopped
    subset: bytes | None  # the DC-scale subset, or None: past stop_after, or not the same pixels (docstring)


def dc_scale_subset(data: bytes) -> bytes | None:
    """The progressive JPEG `data` with only the scans a 1/8-scale decode reads (module docstring), or None
    when `data` is not a progressive JPEG this parser follows to its end or the subset might not decode to
    the same pixels."""
    walk = walk_scans(data)
    return None if walk is None else walk.subset


def walk_scans(data: bytes, stop_after: int | None = None,
               check: Callable[[], None] | None = None) -> ScanWalk | None:
    """Walk a progressive JPEG's segments once: its exact scan count and its DC-scale subset (module
    docstring), so a caller that wants both reads the markers once; None when this parser cannot follow
    `data` to its end (the caller then counts with `count_scans` and decodes the whole file). `check` runs
    every 64 segments (a deadline: a file of a million empty segments is a Python loop of a million steps)."""
    if data[:2] != b"\xff\xd8":
        return None
    kept, pos, n, steps = [b"\xff\xd8"], 2, len(data), 0
    frame: dict[int, bool] | None = None  # component id -> subsampled, once the SOF2 segment is read
    tables: dict[int, bytes] = {}  # AC Huffman table id -> its 16 code-length counts, as DHT segments define them
    scans: list[tuple[frozenset[int], int, int, bool]] = []  # (components, Ss, Ah, kept) in file order
    while True:
        steps += 1
        if check is not None and not steps & 63:
            check()
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
            frame = _components(data[pos + 4:end])
            if frame is None:
                return None
        if marker == _DHT and not _read_ac_tables(data[pos + 4:end], tables):
            return None
        if marker != _SOS:
            kept.append(data[pos:end])
            pos = end
            continue
        if frame is None:
            return None
        if stop_after is not None and len(scans) >= stop_after:
            return ScanWalk(len(scans) + 1, None)
        scan_end = _entropy_end(data, end)
        header = data[pos + 4:end]
        if scan_end is None or not header or len(header) != 1 + 2 * header[0] + 3:
            return None
        ids = header[1:1 + 2 * header[0]:2]
        components = frozenset(ids)
        ss, se, ah, al = header[-3], header[-2], header[-1] >> 4, header[-1] & 0x0F
        keep = ss == 0 or any(frame.get(c, True) for c in components) or (ss == 1 and ah == 0)
        if not keep and not _accepted_ac_scan(ids, header, ss, se, ah, al, frame, tables):
            return None
        if keep:
            kept.append(data[pos:scan_end])
        scans.append((components, ss, ah, keep))
        pos = scan_end
    if frame is None:
        return None
    if not _dc_never_smoothed(frame, scans):
        return ScanWalk(len(scans), None)
    kept.append(b"\xff\xd9")
    return ScanWalk(len(scans), b"".join(kept))


def _components(sof: bytes) -> dict[int, bool] | None:
    """Component id -> whether it is sampled below the frame's maximum, from a SOF segment's body."""
    if len(sof) < 6 or len(sof) != 6 + 3 * sof[5] or sof[5] == 0:
        return None
    factors = {sof[6 + 3 * i]: sof[7 + 3 * i] for i in range(sof[5])}
    if len(factors) != sof[5]:
        return None  # a repeated component id
    h_max = max(f >> 4 for f in factors.values())
    v_max = max(f & 0x0F for f in factors.values())
    return {c: f >> 4 < h_max or f & 0x0F < v_max for c, f in factors.items()}


def _read_ac_tables(body: bytes, tables: dict[int, bytes]) -> bool:
    """Record the AC tables a DHT segment defines (id -> code-length counts); False when the segment itself
    does not parse (libjpeg refuses it)."""
    pos = 0
    while pos < len(body):
        if pos + 17 > len(body):
            return False
        tc_th, counts = body[pos], body[pos + 1:pos + 17]
        total = sum(counts)
        if total > 256 or pos + 17 + total > len(body) or tc_th & 0x0F > 3 or tc_th >> 4 > 1:
            return False
        if tc_th >> 4 == 1:
            tables[tc_th & 0x0F] = counts
        pos += 17 + total
    return True


@lru_cache(maxsize=1024)
def _prefix_code_fits(counts: bytes) -> bool:
    """Whether libjpeg builds a table of these code-length counts (jdhuff.c jpeg_make_d_derived_tbl: the
    canonical Huffman code has no code of all one bits)."""
    code = 0
    for length, count in enumerate(counts, start=1):
        code += count
        if count and code > (1 << length) - 1:
            return False
        code <<= 1
    return True


def _accepted_ac_scan(ids: bytes, header: bytes, ss: int, se: int, ah: int, al: int, frame: dict[int, bool],
                      tables: dict[int, bytes]) -> bool:
    """Whether libjpeg accepts this AC scan header (jdmarker.c get_sos, jdphuff.c start_pass_phuff_decoder)."""
    if len(ids) != 1 or ids[0] not in frame or not 1 <= ss <= se <= 63 or al > 13 or (ah and al != ah - 1):
        return False
    counts = tables.get(header[2] & 0x0F)  # its AC table: defined before the scan, and well-formed
    return counts is not None and _prefix_code_fits(counts)


def _dc_never_smoothed(frame: dict[int, bool], scans: list[tuple[frozenset[int], int, int, bool]]) -> bool:
    """Every full-resolution component has a kept Ss = 1, Ah = 0 scan before the file's last scan and before
    the subset's last scan (module docstring)."""
    kept = [i for i, s in enumerate(scans) if s[3]]
    if not kept:
        return False
    before = min(len(scans) - 1, kept[-1])  # scans before this index precede both last scans
    for component, subsampled in frame.items():
        if not subsampled and not any(component in c and ss == 1 and ah == 0 for c, ss, ah, _ in scans[:before]):
            return False
    return True


# A marker as libjpeg sees one: 0xFF followed by anything but a stuffed 0x00 or another 0xFF (a fill byte: the
# marker starts at the last 0xFF).
_MARKER = re.compile(rb"\xff[^\x00\xff]")
# The marker that ends a scan's entropy-coded data: as above, but a restart marker 0xD0..D7 is inside the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _entropy_end(data: bytes, pos: int) -> int | None:
    """Offset of the marker that ends the entropy-coded data starting at `pos`, or None when the data runs
    out first."""
    found = _SCAN_END.search(data, pos)
    return None if found is None else found.start()
