"""Minimal encoders for the two lossless JPEG families DICOM ultrasound uses, for test
fixtures only (nothing installed here encodes them: pydicom has no JPEG lossless
encoder, its JPEG-LS encoder needs pyjpegls, and Pillow writes neither).

* :func:`jpeg_lossless`: JPEG lossless, process 14 (ITU-T T.81 annex H), one
  component, any of the seven predictors, one fixed Huffman table.
* :func:`jpeg_ls`: lossless JPEG-LS (ITU-T T.87, NEAR = 0), one component, the
  default parameters: the encoder procedures of annex A, regular and run mode.

Both are checked only by decoding: the tests compare the decoder's output with the
encoded array sample for sample, so an encoder bug fails the test, never hides one.
"""

from __future__ import annotations

import numpy as np

SOI, EOI = b"\xff\xd8", b"\xff\xd9"


def _segment(marker: int, payload: bytes) -> bytes:
    """A marker segment: marker, then its length (which counts itself), then payload."""
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _frame_header(marker: int, image: np.ndarray, bits: int) -> bytes:
    """SOF: precision, rows, columns, one component (id 1, sampling 1x1, table 0)."""
    rows, cols = image.shape
    size = rows.to_bytes(2, "big") + cols.to_bytes(2, "big")
    return _segment(marker, bytes([bits]) + size + bytes([1, 1, 0x11, 0]))


# --------------------------------------------------------------- JPEG lossless
# T.81 table H.1; Ra left, Rb above, Rc above-left. Shifts are arithmetic (floor).
_PREDICTORS = {
    1: lambda a, b, c: a,
    2: lambda a, b, c: b,
    3: lambda a, b, c: c,
    4: lambda a, b, c: a + b - c,
    5: lambda a, b, c: a + ((b - c) >> 1),
    6: lambda a, b, c: b + ((a - c) >> 1),
    7: lambda a, b, c: (a + b) >> 1,
}
_CATEGORIES = 17  # difference categories SSSS 0..16, every one coded in 5 bits


def jpeg_lossless(image: np.ndarray, bits: int = 8, predictor: int = 1) -> bytes:
    """``image`` (``[H, W]`` integers below ``2**bits``) as a JPEG lossless (SOF3)
    stream with selection value ``predictor`` (1: the DICOM "SV1" syntax .70)."""
    assert 2 <= bits <= 15 and predictor in _PREDICTORS and image.ndim == 2
    x = image.astype(np.int64)
    ra, rb, rc = (np.zeros_like(x) for _ in range(3))
    ra[:, 1:], rb[1:, :], rc[1:, 1:] = x[:, :-1], x[:-1, :], x[:-1, :-1]
    pred = _PREDICTORS[predictor](ra, rb, rc)
    pred[0, :] = ra[0, :]  # H.1.2.1: the first line predicts from the left,
    pred[:, 0] = rb[:, 0]  # the first column from above,
    pred[0, 0] = 1 << (bits - 1)  # the first sample from the middle of the range.
    out = []
    for diff in (x - pred).ravel().tolist():
        ssss = abs(diff).bit_length()  # at most 16 for bits <= 15
        out.append(format(ssss, "05b"))  # category ssss has the 5-bit code ssss
        if 0 < ssss < 16:  # F.1.2.1.1: the low bits of diff, or of diff - 1 if negative
            out.append(format((diff if diff > 0 else diff - 1) & ((1 << ssss) - 1), f"0{ssss}b"))
    data = _bytes_stuffed_ff00("".join(out))
    lengths = bytes([0, 0, 0, 0, _CATEGORIES] + [0] * 11)  # 17 codes of length 5
    huffman = _segment(0xC4, bytes([0x00]) + lengths + bytes(range(_CATEGORIES)))
    scan = _segment(0xDA, bytes([1, 1, 0x00, predictor, 0, 0]))  # Ss = predictor
    return SOI + huffman + _frame_header(0xC3, image, bits) + scan + data + EOI


def _bytes_stuffed_ff00(bits: str) -> bytes:
    """T.81 F.1.2.3: pad with 1-bits to a byte, then follow every 0xFF by 0x00."""
    bits += "1" * (-len(bits) % 8)
    raw = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return raw.replace(b"\xff", b"\xff\x00")


# --------------------------------------------------------------------- JPEG-LS
# T.87 A.7.1.2: run-length order of each RUNindex.
_J = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]
_J += [8, 9, 10, 11, 12, 13, 14, 15]
_RESET, _MIN_C, _MAX_C = 64, -128, 127


class _Context:
    """A context's statistics (T.87 A.2.1): A, B, C, N and, for run interruption, Nn."""

    def __init__(self, a: int):
        self.a, self.b, self.c, self.n, self.nn = a, 0, 0, 1, 0

    def k(self, extra: int = 0) -> int:
        """The Golomb parameter: the least k with ``N << k >= A + extra``."""
        k = 0
        while (self.n << k) < self.a + extra:
            k += 1
        return k


class _LSWriter:
    """Lossless JPEG-LS encoding state of one scan (T.87 annex A)."""

    def __init__(self, bits: int):
        assert 8 <= bits <= 16  # the default thresholds below hold for MAXVAL >= 128
        self.maxval, self.range, self.qbpp = (1 << bits) - 1, 1 << bits, bits
        self.limit = 2 * (bits + max(8, bits))
        factor = (min(self.maxval, 4095) + 128) >> 8  # C.2.4.1.1.1, NEAR = 0
        self.t1, self.t2, self.t3 = factor + 2, factor * 4 + 3, factor * 17 + 4
        self.a0 = max(2, (self.range + 32) >> 6)
        self.regular: dict[tuple[int, int, int], _Context] = {}
        self.interrupt = [_Context(self.a0), _Context(self.a0)]  # RItype 0 and 1
        self.run_index = 0
        self.out: list[str] = []

    def bits(self, value: int, count: int) -> None:
        if count:
            self.out.append(format(value, f"0{count}b"))

    def golomb(self, k: int, mapped: int, limit: int) -> None:
        """A.5.3: limited-length Golomb code of ``mapped``."""
        high = mapped >> k
        if high < limit - self.qbpp - 1:
            self.bits(1, high + 1)
            self.bits(mapped & ((1 << k) - 1), k)
        else:
            self.bits(1, limit - self.qbpp)
            self.bits((mapped - 1) & ((1 << self.qbpp) - 1), self.qbpp)

    def mod_range(self, error: int) -> int:
        if error < 0:
            error += self.range
        return error - self.range if error >= (self.range + 1) // 2 else error

    def quantize(self, d: int) -> int:
        """A.3.3: a local gradient's region, -4..4."""
        t1, t2, t3 = self.t1, self.t2, self.t3
        sign = -1 if d < 0 else 1
        d = abs(d)
        region = 0 if d == 0 else 1 if d < t1 else 2 if d < t2 else 3 if d < t3 else 4
        return sign * region

    def regular_sample(self, x: int, ra: int, rb: int, rc: int, rd: int) -> None:
        """A.3 to A.6: context, median edge prediction, corrected, coded, updated."""
        q = [self.quantize(rd - rb), self.quantize(rb - rc), self.quantize(rc - ra)]
        sign = -1 if next(v for v in q if v) < 0 else 1
        ctx = self.regular.setdefault(tuple(sign * v for v in q), _Context(self.a0))
        if rc >= max(ra, rb):
            px = min(ra, rb)
        elif rc <= min(ra, rb):
            px = max(ra, rb)
        else:
            px = ra + rb - rc
        px = min(max(px + sign * ctx.c, 0), self.maxval)
        error = self.mod_range(sign * (x - px))
        k = ctx.k()
        if k == 0 and 2 * ctx.b <= -ctx.n:  # A.5.2: the mapping swapped
            mapped = 2 * error + 1 if error >= 0 else -2 * (error + 1)
        else:
            mapped = 2 * error if error >= 0 else -2 * error - 1
        self.golomb(k, mapped, self.limit)
        ctx.a += abs(error)  # A.6: statistics and bias correction
        ctx.b += error
        if ctx.n == _RESET:
            ctx.a, ctx.b, ctx.n = ctx.a >> 1, ctx.b >> 1, ctx.n >> 1
        ctx.n += 1
        if ctx.b <= -ctx.n:
            ctx.b = max(ctx.b + ctx.n, -ctx.n + 1)
            ctx.c = max(ctx.c - 1, _MIN_C)
        elif ctx.b > 0:
            ctx.b = min(ctx.b - ctx.n, 0)
            ctx.c = min(ctx.c + 1, _MAX_C)

    def run(self, length: int, end_of_line: bool) -> None:
        """A.7.1.2: the run length, in blocks of ``2 ** J[RUNindex]``."""
        while length >= 1 << _J[self.run_index]:
            self.bits(1, 1)
            length -= 1 << _J[self.run_index]
            self.run_index = min(self.run_index + 1, 31)
        if end_of_line:
            if length:
                self.bits(1, 1)
        else:
            self.bits(length, _J[self.run_index] + 1)  # a 0, then the rest in J bits

    def interruption(self, x: int, ra: int, rb: int) -> None:
        """A.7.2: the sample that ended a run, in its own two contexts."""
        ri_type = int(ra == rb)
        error = x - ra if ri_type else (x - rb) * (-1 if ra > rb else 1)
        error = self.mod_range(error)
        ctx = self.interrupt[ri_type]
        k = ctx.k((ctx.n >> 1) * ri_type)
        swap = (
            (k == 0 and error > 0 and 2 * ctx.nn < ctx.n)
            or (error < 0 and 2 * ctx.nn >= ctx.n)
            or (error < 0 and k != 0)
        )
        mapped = 2 * abs(error) - ri_type - int(swap)
        self.golomb(k, mapped, self.limit - _J[self.run_index] - 1)
        if error < 0:
            ctx.nn += 1
        ctx.a += (mapped + 1 - ri_type) >> 1
        if ctx.n == _RESET:
            ctx.a, ctx.n, ctx.nn = ctx.a >> 1, ctx.n >> 1, ctx.nn >> 1
        ctx.n += 1
        self.run_index = max(self.run_index - 1, 0)

    def line(self, cur: list[int], above: list[int]) -> None:
        """One line; ``above`` is the line above framed as A.2.1 asks: ``above[0]`` the
        Rc of the first sample, ``above[1:-1]`` the samples, ``above[-1]`` a copy of
        the last one (the Rd of the last sample)."""
        width, i = len(cur), 0
        while i < width:
            ra = cur[i - 1] if i else above[1]  # a line starts with Ra = Rb
            rb, rc, rd = above[i + 1], above[i], above[i + 2]
            if rd != rb or rb != rc or rc != ra:
                self.regular_sample(cur[i], ra, rb, rc, rd)
                i += 1
                continue
            length = 0  # A.7: all gradients zero, run mode
            while i + length < width and cur[i + length] == ra:
                length += 1
            self.run(length, i + length == width)
            i += length
            if i < width:
                self.interruption(cur[i], ra, above[i + 1])
                i += 1


def jpeg_ls(image: np.ndarray, bits: int = 8) -> bytes:
    """``image`` (``[H, W]`` integers below ``2**bits``, 8 <= bits <= 16) as a lossless
    JPEG-LS (SOF55) stream with the default coding parameters."""
    assert image.ndim == 2
    writer = _LSWriter(bits)
    width = image.shape[1]
    above = [0] * (width + 2)  # the line above the first is all zeros
    for row in image.astype(np.int64).tolist():
        writer.line(row, above)
        above = [above[1]] + row + [row[-1]]  # the next Rc at column 0 is this Ra
    data = _bytes_stuffed_ls("".join(writer.out))
    scan = _segment(0xDA, bytes([1, 1, 0, 0, 0, 0]))  # table 0, NEAR 0, ILV 0, no shift
    return SOI + _frame_header(0xF7, image, bits) + scan + data + EOI


def _bytes_stuffed_ls(bits: str) -> bytes:
    """T.87 A.1: after a 0xFF byte the next byte carries 7 bits (its top bit 0); the
    last byte is padded with 0-bits and never left as 0xFF before the marker."""
    out, i = bytearray(), 0
    while i < len(bits):
        n = 7 if out and out[-1] == 0xFF else 8
        out.append(int(bits[i : i + n].ljust(n, "0"), 2))
        i += n
    if out and out[-1] == 0xFF:
        out.append(0)
    return bytes(out)
