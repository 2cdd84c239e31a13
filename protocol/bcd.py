"""Packed BCD as DL/T 645-2007 and CJ/T 188-2004 put it on the wire.

Theory of operation
-------------------
Both standards carry numbers as packed BCD, two decimal digits per byte, **least significant byte
first** (DL/T 645-2007 [数据格式], [传输次序]; CJ/T 188-2004 likewise). A scaled value such as energy
``XXXXXX.XX`` is the integer ``value × 10^decimals`` in BCD; where a value can be negative (current,
power, power factor) the sign is the top bit (0x80) of the most significant byte, i.e. of the *last*
byte on the wire (DL/T 645-2007 [附录A 数据编码表]: "最高位表示方向"). A signed field therefore holds one
digit less at the top: the most significant digit is at most 7.

Speed matters here (the codec benchmark runs through these functions), so digits are converted with
``bytes.hex()`` / ``bytes.fromhex()`` on the reversed bytes instead of per-nibble Python loops.

Every malformed input raises :class:`~protocol.errors.ValueCodecError` naming what was wrong.
"""

from __future__ import annotations

from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded

from protocol.errors import ValueCodecError

__all__ = ["address_matches", "bcd_decode", "bcd_encode", "bcd_to_decimal", "decimal_to_bcd"]


def bcd_encode(value: int, nbytes: int) -> bytes:
    """Encode a non-negative integer as ``nbytes`` of packed BCD, low byte first."""
    if nbytes < 1:
        raise ValueCodecError(f"BCD field length must be at least 1 byte, got {nbytes}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueCodecError(f"BCD value must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueCodecError(f"BCD value must not be negative, got {value}")
    digits = nbytes * 2
    text = f"{value:0{digits}d}"
    if len(text) > digits:
        raise ValueCodecError(f"{value} does not fit in {nbytes} BCD bytes ({digits} digits)")
    return bytes.fromhex(text)[::-1]


def bcd_decode(data: bytes) -> int:
    """Decode packed BCD (low byte first) to an integer; a nibble above 9 is an error."""
    if not data:
        raise ValueCodecError("empty BCD field")
    text = data[::-1].hex()
    if not text.isdigit():
        raise ValueCodecError(f"not BCD: {data.hex(' ')}")
    return int(text)


# Wide enough that no value that could fit a DL/T 645 field is ever rounded; Inexact turns rounding
# of anything larger into an error instead of a silently different number.
_EXACT = Context(prec=64, traps=[Inexact, InvalidOperation, Overflow, Rounded])
_SIGN_LIMIT = [8 * 10 ** (2 * n - 1) if n else 0 for n in range(33)]
_UNSIGNED_LIMIT = [10 ** (2 * n) for n in range(33)]
_DIGIT_FORMATS = [f"%0{2 * n}d" for n in range(33)]


def decimal_to_bcd(value: Decimal | int, nbytes: int, decimals: int, signed: bool) -> bytes:
    """Encode ``value`` scaled by ``10^decimals``; refuses to round (quantize first if you mean to)."""
    if not 0 < nbytes <= 32:
        raise ValueCodecError(f"BCD field length must be 1–32 bytes, got {nbytes}")
    if decimals < 0:
        raise ValueCodecError(f"decimals must not be negative, got {decimals}")
    if type(value) is int:
        number = value * 10**decimals
    elif isinstance(value, Decimal):
        try:
            scaled = value.scaleb(decimals, _EXACT)
            number = int(scaled)
        except (ArithmeticError, ValueError) as exc:
            raise ValueCodecError(f"cannot scale {value} by 10^{decimals} exactly") from exc
        if number != scaled:
            raise ValueCodecError(f"{value} has more than {decimals} decimal places; quantize it first")
    else:
        raise ValueCodecError(f"value must be a Decimal or int, got {type(value).__name__}")
    if number < 0:
        if not signed:
            raise ValueCodecError(f"{value} is negative but the field is unsigned")
        magnitude = -number
    else:
        magnitude = number
    # DL/T 645-2007 [附录A 数据编码表]: the sign takes the top bit of the most significant byte, so the
    # top digit of a signed field is at most 7.
    if magnitude >= (_SIGN_LIMIT[nbytes] if signed else _UNSIGNED_LIMIT[nbytes]):
        raise ValueCodecError(f"{value} does not fit in {nbytes} BCD bytes with {decimals} decimals")
    raw = bytes.fromhex(_DIGIT_FORMATS[nbytes] % magnitude)[::-1]
    if number < 0:
        return raw[:-1] + bytes((raw[-1] | 0x80,))
    return raw


def bcd_to_decimal(data: bytes, decimals: int, signed: bool) -> Decimal:
    """Decode scaled BCD to a ``Decimal`` with exactly ``decimals`` places (``0.00``, not ``0``)."""
    if not data:
        raise ValueCodecError("empty BCD field")
    if decimals < 0:
        raise ValueCodecError(f"decimals must not be negative, got {decimals}")
    negative = False
    if signed and data[-1] & 0x80:
        negative = True
        text = f"{data[-1] & 0x7F:02x}" + data[-2::-1].hex()
    else:
        text = data[::-1].hex()
    if not text.isdigit():
        raise ValueCodecError(f"not BCD: {data.hex(' ')}")
    if decimals == 0:
        result = Decimal(text)
    elif decimals <= len(text):
        result = Decimal(f"{text[:-decimals]}.{text[-decimals:]}")
    else:
        result = Decimal(int(text)).scaleb(-decimals)
    if negative and result:
        return -result
    return result


def address_matches(pattern: str, address: str, *, per_digit: bool = True) -> bool:
    """Whether ``address`` is reached by ``pattern``, where ``A`` in the pattern is a wildcard.

    The standards' wildcard is a whole byte: DL/T 645-2007 [地址域] short addressing fills the
    remaining high bytes with AAH, and CJ/T 188-2004 addresses its meters the same way (see
    docs/protocols.md, "Addresses and wildcards"). With ``per_digit=False`` that is the rule: each
    digit pair of the pattern is ``AA`` or equal to the address's. Many meters also take a single
    ``A`` digit as "any digit" (``per_digit=True``, the lenient rule): the gateway uses it to
    recognise the reply to a pattern it sent, a simulated meter only when told to
    (:class:`firmware_sim.quirks.Quirks`).
    """
    if len(pattern) != len(address) or len(pattern) % 2:
        return False
    if per_digit:
        return all(p in "Aa" or p == a for p, a in zip(pattern, address, strict=True))
    return all(
        pattern[i : i + 2] in ("AA", "aa", "Aa", "aA") or pattern[i : i + 2] == address[i : i + 2]
        for i in range(0, len(pattern), 2)
    )
