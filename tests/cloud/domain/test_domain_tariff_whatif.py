"""The tariff what-if re-rates billed intervals under a draft version: figures computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from cloud.domain.errors import TariffError
from cloud.domain.tariff_whatif import BilledInterval, what_if
from cloud.domain.tariffs import TariffVersion
from protocol.contract import Quantity

T = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)  # 10:00 on 3 November in Shanghai
KWH = Quantity.ENERGY_TOTAL_KWH


def _draft(spec: dict[str, object]) -> TariffVersion:
    return TariffVersion.from_spec("draft", datetime(2030, 1, 1, tzinfo=UTC), spec)


def _iv(
    payer: str, room: str, hours: int, kwh: str, billed_milli: int, building: str = "A栋"
) -> BilledInterval:
    start = T + timedelta(hours=hours)
    return BilledInterval(
        payer, room, building, start, start + timedelta(hours=1), {KWH: Decimal(kwh)}, billed_milli
    )


def test_a_flat_draft_against_what_was_billed() -> None:
    # billed at 0.5 yuan/kWh = 50,000 milli-fen/kWh:
    #   room 301: 12.5 kWh → 625,000 milli (6.25 yuan), room 302: 3 kWh → 150,000 milli (1.50 yuan)
    # draft 0.6 yuan/kWh = 60,000 milli-fen/kWh:
    #   301: 12.5 × 60,000 = 750,000 milli (7.50 yuan); 302: 3 × 60,000 = 180,000 milli (1.80 yuan)
    # totals: billed 775,000 milli = 775 fen, draft 930,000 milli = 930 fen, difference +155 fen
    result = what_if(
        _draft({"kind": "flat", "price": "0.6"}),
        [_iv("account:1", "301", 0, "12.5", 625_000), _iv("account:2", "302", 1, "3", 150_000)],
    )
    assert (result.total.billed_fen, result.total.draft_fen, result.total.difference_fen) == (775, 930, 155)
    assert [(room, f.billed_fen, f.draft_fen) for room, f in result.rooms] == [
        ("301", 625, 750),
        ("302", 150, 180),
    ]
    assert result.buildings["A栋"].draft_milli == 930_000
    assert result.skipped == 0


def test_tiers_count_per_payer_through_the_month() -> None:
    # draft: the first 10 kWh of the month at 0.5 yuan, beyond at 0.8 yuan (50,000 / 80,000 milli-fen)
    # account 1 uses 6 kWh, then 7 kWh: 6 × 0.5 = 3.00; then 4 × 0.5 = 2.00 + 3 × 0.8 = 2.40 → 4.40
    #   → 7.40 yuan = 740 fen
    # account 2 uses 7 kWh (its own counter, from zero): 7 × 0.5 = 3.50 yuan = 350 fen
    # draft total 1,090 fen; billed (flat 0.5): 13 kWh → 650 fen, 7 kWh → 350 fen = 1,000 fen
    draft = _draft(
        {"kind": "tiered", "tiers": [{"upto": "10", "price": "0.5"}, {"upto": None, "price": "0.8"}]}
    )
    result = what_if(
        draft,
        [
            _iv("account:1", "301", 5, "7", 350_000),  # given out of order: re-rated by end time
            _iv("account:1", "301", 0, "6", 300_000),
            _iv("account:2", "302", 2, "7", 350_000),
        ],
    )
    rooms = dict(result.rooms)
    assert rooms["301"].draft_fen == 740
    assert rooms["302"].draft_fen == 350
    assert (result.total.billed_fen, result.total.draft_fen) == (1000, 1090)


def test_fen_are_whole_fen_as_billing_posts_them() -> None:
    # 0.333 kWh × 0.56831 yuan = 0.18924723 yuan = 18,924.723 milli → 18,925 milli (half-up per line)
    # → 18 whole fen (billing carries the 925 milli-fen to the next charge)
    result = what_if(
        _draft({"kind": "flat", "price": "0.56831"}), [_iv("account:1", "301", 0, "0.333", 16_650)]
    )
    assert result.total.draft_milli == 18_925
    assert result.total.draft_fen == 18
    assert result.total.billed_fen == 16


def test_an_interval_the_draft_cannot_price_is_left_out_of_both_sides() -> None:
    draft = _draft({"kind": "tou", "tou_prices_yuan": {"energy_t1_kwh": "1.2", "energy_t3_kwh": "0.6"}})
    result = what_if(draft, [_iv("account:1", "301", 0, "5", 250_000)])
    assert result.skipped == 1
    assert "energy_t1_kwh" in result.skipped_reason
    assert result.total.billed_milli == 0
    assert result.total.readings == 0


def test_a_draft_is_read_by_the_one_spec_reader() -> None:
    with pytest.raises(TariffError, match="price"):
        _draft({"kind": "flat", "price": "-1"})
