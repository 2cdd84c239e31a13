"""edge.bus against simulated meters over a real pty and over TCP (socket://)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from edge.bus import Bus, TraceEntry
from edge.drivers.dlt645 import Dlt645Decoder
from edge.errors import BadReply, NoReply, PortError
from firmware_sim import Ddsy1352Sim, LineHandle, SimLine, run_line
from protocol import dlt645 as d
from protocol.errors import ChecksumError

A1, A2, DEAD = "000000000001", "000000000002", "000000000009"


def _read(address: str, di: int = d.DI_ENERGY_FORWARD_TOTAL, preamble: int = 4) -> bytes:
    return d.build(d.ReadRequest(address, di), preamble=preamble)


@pytest.fixture(scope="module")
def line() -> Iterator[LineHandle]:
    meters = [
        Ddsy1352Sim(A1, base_w=0, initial_kwh=Decimal("123.45")),
        Ddsy1352Sim(A2, base_w=0, initial_kwh=Decimal("7.00")),
    ]
    with run_line(SimLine(2400, "E", meters, turnaround_s=0.02), tcp_port=0) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _no_faults(line: LineHandle) -> Iterator[None]:
    yield
    for meter in line.meters:
        meter.faults.clear()
    time.sleep(0.05)  # noise after a faulty meter's last reply must not collide with the next test


@pytest.fixture(params=["pty", "tcp"])
def url(request: pytest.FixtureRequest, line: LineHandle) -> str:
    value = line.pty_path if request.param == "pty" else line.tcp_url
    assert value is not None
    return value


@pytest.fixture
def pty_url(line: LineHandle) -> str:
    """The slower fault tests run on the pty only; the TCP path is the same bus code."""
    assert line.pty_path is not None
    return line.pty_path


def _bus(url: str, **kwargs: object) -> Bus:
    settings: dict[str, object] = {"turnaround_s": 0.15, "inter_byte_s": 0.1, "retries": 2}
    settings.update(kwargs)
    return Bus(url, **settings)  # type: ignore[arg-type]


def test_transaction_returns_the_reply_frame(url: str) -> None:
    with _bus(url) as bus:
        decoder = Dlt645Decoder(A1, d.Function.READ)
        raw = bus.transact(_read(A1), decoder, expected_len=24)
        assert decoder.frame is not None
        reply = d.parse(decoder.frame)
        assert isinstance(reply, d.ReadResponse)
        assert d.decode_value(reply.di, reply.data) == Decimal("123.45")
        assert raw.endswith(b"\x16")
        assert d.decode_frame(raw) == decoder.frame
        s = bus.stats
        assert (s.transactions, s.attempts, s.timeouts, s.errors) == (1, 1, 0, 0)
        assert s.bytes_sent == 20
        assert s.bytes_received == 24
        assert s.busy_s > 0
        assert 0 < s.utilisation() <= 1


def test_reply_is_returned_when_complete_not_after_a_silence(url: str) -> None:
    """The bus returns on the decoder's word: well before the silence a timeout-based bus would wait."""
    with _bus(url, turnaround_s=2.0, inter_byte_s=2.0) as bus:
        bus.transact(_read(A2), Dlt645Decoder(A2, d.Function.READ), expected_len=24)
        # one transaction: 44 bytes at 2400 8E1 = 0.2 s on the wire + 20 ms turnaround, against a 4 s budget
        assert bus.stats.busy_s < bus.turnaround_s


def test_silent_meter_times_out_after_retries_within_budget(url: str) -> None:
    with _bus(url, retries=1) as bus:
        start = time.monotonic()
        with pytest.raises(NoReply, match=r"no reply .* \(after 2 attempts\)"):
            bus.transact(_read(DEAD), Dlt645Decoder(DEAD, d.Function.READ), expected_len=24)
        elapsed = time.monotonic() - start
        budget = bus.no_reply_budget(20)
        assert budget == pytest.approx(2 * (bus.first_byte_timeout(20) + bus.min_gap_s))
        assert budget * 0.9 <= elapsed <= budget + 0.3
        s = bus.stats
        assert (s.transactions, s.attempts, s.retries, s.timeouts, s.failures) == (1, 2, 1, 2, 1)
        assert bus.recent[-1].note == "timeout"


def test_bad_checksum_is_a_bad_reply_and_retried(url: str, line: LineHandle) -> None:
    line.meter(A1).faults.set(bad_checksum=True)
    with _bus(url, retries=2) as bus:
        with pytest.raises(BadReply, match="checksum"):
            bus.transact(_read(A1), Dlt645Decoder(A1, d.Function.READ), expected_len=24)
        assert (bus.stats.attempts, bus.stats.errors, bus.stats.timeouts) == (3, 3, 0)
        line.meter(A1).faults.clear()
        bus.transact(_read(A1), Dlt645Decoder(A1, d.Function.READ), expected_len=24)
        assert bus.stats.failures == 1
        assert bus.stats.transactions == 2


def test_garbage_around_the_reply_is_skipped(pty_url: str, line: LineHandle) -> None:
    """Noise before the frame is skipped; noise after it may still be on the wire when the next
    request goes out (the bus cannot know more is coming), which costs a retry, never a failure."""
    line.meter(A2).faults.set(garbage=True)
    with _bus(pty_url) as bus:
        for _ in range(3):
            decoder = Dlt645Decoder(A2, d.Function.READ)
            raw = bus.transact(_read(A2), decoder, expected_len=24)
            assert decoder.frame is not None
            assert decoder.frame.address == A2
            assert decoder.discarded > 4  # preamble plus the noise before the frame
            assert len(raw) > 24
        assert bus.stats.failures == 0
        assert bus.stats.errors + bus.stats.timeouts == bus.stats.retries


def test_slow_reply_within_turnaround_succeeds_beyond_it_times_out(pty_url: str, line: LineHandle) -> None:
    line.meter(A1).faults.set(slow_reply_s=0.1)
    with _bus(pty_url, turnaround_s=0.3, retries=0) as bus:
        bus.transact(_read(A1), Dlt645Decoder(A1, d.Function.READ), expected_len=24)
        line.meter(A1).faults.set(slow_reply_s=0.6)
        with pytest.raises(NoReply):
            bus.transact(_read(A1), Dlt645Decoder(A1, d.Function.READ), expected_len=24)
        time.sleep(0.5)  # let the late reply pass; the next request flushes it anyway
        line.meter(A1).faults.clear()
        decoder = Dlt645Decoder(A1, d.Function.READ)
        bus.transact(_read(A1), decoder, expected_len=24)
        assert decoder.frame is not None


def test_minimum_gap_and_trace(pty_url: str) -> None:
    seen: list[TraceEntry] = []
    with _bus(pty_url, min_gap_s=0.05, trace=seen.append) as bus:
        for address in (A1, A2):
            request = _read(address, preamble=0)  # wake-up bytes would count towards the gap
            bus.transact(request, Dlt645Decoder(address, d.Function.READ), expected_len=24)
    kinds = [(e.direction, e.note) for e in seen]
    assert kinds == [("tx", "request"), ("rx", "reply"), ("tx", "request"), ("rx", "reply")]
    assert seen[2].t - seen[1].t >= 0.05 - 0.002
    assert list(bus.recent) == seen
    assert seen[0].data == _read(A1, preamble=0)


def test_broadcast_is_sent_without_waiting_for_a_reply(pty_url: str, line: LineHandle) -> None:
    when = line.meter(A1).meter_time.replace(microsecond=0).replace(year=2030)
    with _bus(pty_url) as bus:
        bus.send(d.build(d.TimeSyncRequest(when)))
        assert bus.stats.broadcasts == 1
        assert bus.stats.transactions == 0
        decoder = Dlt645Decoder(A1, d.Function.READ)
        bus.transact(_read(A1, d.DI_DATE), decoder, expected_len=24)
    assert line.meter(A1).meter_time.year == 2030


def test_port_that_does_not_exist() -> None:
    with pytest.raises(PortError) as info:
        Bus("/dev/ttyUSB9").open()
    assert str(info.value) == "cannot open /dev/ttyUSB9: No such file or directory"


def test_tcp_converter_that_refuses() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PortError) as info:
        Bus(f"socket://127.0.0.1:{port}").open()
    assert str(info.value) == f"cannot open socket://127.0.0.1:{port}: Connection refused"


def _echoing_converter(target: str) -> tuple[str, threading.Event]:
    """A TCP converter that echoes every request byte back before the meters' reply (half-duplex
    adapters without echo suppression do this)."""
    host, port = target.removeprefix("socket://").split(":")
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        client, _ = server.accept()
        upstream = socket.create_connection((host, int(port)))
        for sock in (client, upstream):
            sock.settimeout(0.02)
        with client, upstream, server:
            while not stop.is_set():
                for src, dst, echo in ((client, upstream, True), (upstream, client, False)):
                    try:
                        data = src.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        return
                    if echo:
                        client.sendall(data)
                    dst.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return f"socket://127.0.0.1:{server.getsockname()[1]}", stop


def test_local_echo_is_discarded(line: LineHandle) -> None:
    assert line.tcp_url is not None
    url, stop = _echoing_converter(line.tcp_url)
    try:
        with _bus(url, local_echo=True) as bus:
            decoder = Dlt645Decoder(A1, d.Function.READ)
            raw = bus.transact(_read(A1), decoder, expected_len=24)
            assert decoder.frame is not None
            assert decoder.frame.is_reply
            assert not raw.startswith(_read(A1))
            assert [e.note for e in bus.recent] == ["request", "echo", "reply"]
    finally:
        stop.set()


def test_converter_dropping_the_connection_is_a_port_error_then_reconnects(line: LineHandle) -> None:
    assert line.tcp_url is not None
    with _bus(line.tcp_url) as first:
        first.transact(_read(A1), Dlt645Decoder(A1, d.Function.READ), expected_len=24)
        with _bus(line.tcp_url):  # a converter serves one client: the newest wins
            time.sleep(0.1)
            with pytest.raises(PortError, match="socket disconnected"):
                first.transact(_read(A1), Dlt645Decoder(A1, d.Function.READ), expected_len=24)
            assert not first.is_open
        decoder = Dlt645Decoder(A1, d.Function.READ)
        first.transact(_read(A1), decoder, expected_len=24)  # reopens the port by itself
        assert first.is_open
        assert decoder.frame is not None


def test_decoder_whole_buffer_and_byte_by_byte(line: LineHandle) -> None:
    """The same reply, fed at once or one byte at a time, completes exactly at its last byte."""
    reply = d.build(d.ReadResponse(A1, d.DI_ENERGY_FORWARD_TOTAL, b"\x45\x23\x01\x00"))
    whole = Dlt645Decoder(A1, d.Function.READ, d.DI_ENERGY_FORWARD_TOTAL)
    assert whole.feed(b"\x00\x13" + reply + b"\x99")
    byte = Dlt645Decoder(A1, d.Function.READ, d.DI_ENERGY_FORWARD_TOTAL)
    done = [byte.feed(bytes((b,))) for b in reply]
    assert done == [False] * (len(reply) - 1) + [True]
    assert whole.frame == byte.frame
    other_di = Dlt645Decoder(A1, d.Function.READ, d.DI_VOLTAGE_A)
    assert not other_di.feed(reply)  # a late reply to another read is not ours
    other_meter = Dlt645Decoder(A2, d.Function.READ)
    assert not other_meter.feed(reply)
    echo = Dlt645Decoder(A1, d.Function.READ)
    assert not echo.feed(_read(A1))  # our own request echoed back is not a reply
    corrupt = bytearray(reply)
    corrupt[-2] ^= 0x5A
    behind = Dlt645Decoder(A1, d.Function.READ)
    assert behind.feed(bytes(corrupt) + reply)  # a corrupt frame does not hide a valid one behind it
    alone = Dlt645Decoder(A1, d.Function.READ)
    with pytest.raises(ChecksumError):
        alone.feed(bytes(corrupt))
