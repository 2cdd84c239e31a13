"""The cashier report as an Excel workbook (openpyxl): what finance files and prints.

Three sheets, zh-CN headings with English beside them: 汇总 Summary (per method), 明细 Lines (each
receipt) and 核对 Tie-out (report against ledger and against WeChat Pay orders). Money is written in
yuan as exact decimals with two places (from integer fen), never as binary floats.
"""

from __future__ import annotations

from decimal import Decimal
from io import BytesIO

from openpyxl import Workbook
from openpyxl.styles import Font
from openpyxl.worksheet.worksheet import Worksheet

from cloud.domain.money import fen_to_yuan
from cloud.services.cashier import CashierReport, MethodTotal

__all__ = ["METHOD_NAMES", "workbook_bytes"]

METHOD_NAMES = {
    "cash": "现金 Cash",
    "bank_transfer": "银行转账 Bank transfer",
    "wechat": "微信支付 WeChat Pay",
    "all": "全部 All",
    "": "",
}
_KIND_NAMES = {
    "recharge": "充值 Top-up",
    "refund": "退款 Refund",
    "reversal": "冲正 Reversal",
    "other": "其他 Other",
}
_MONEY = "#,##0.00"


def _yuan(fen: int) -> Decimal:
    return fen_to_yuan(fen)


def _header(sheet: Worksheet, *names: str) -> None:
    sheet.append(list(names))
    for cell in sheet[sheet.max_row]:
        cell.font = Font(bold=True)


def _money_row(sheet: Worksheet, label: str, total: MethodTotal) -> None:
    sheet.append([label, total.count, _yuan(total.total_fen)])
    sheet.cell(sheet.max_row, 3).number_format = _MONEY


def workbook_bytes(report: CashierReport) -> bytes:
    book = Workbook()
    summary = book.active
    assert summary is not None
    summary.title = "汇总 Summary"
    summary.append(["收银日报 Cashier report", report.project_name, report.day.isoformat(), report.timezone])
    _header(summary, "方式 Method", "笔数 Count", "金额(元) Amount (yuan)")
    for row in report.recharges:
        _money_row(summary, f"充值 {METHOD_NAMES[row.method]}", row)
    for row in report.refunds:
        _money_row(summary, f"退款 {METHOD_NAMES[row.method]}", row)
    _money_row(summary, "冲正 Reversals", report.reversals)
    counted = len(report.lines) - len(report.unexplained)
    summary.append(["合计 Total", counted, _yuan(report.report_total_fen)])
    summary.cell(summary.max_row, 3).number_format = _MONEY

    lines = book.create_sheet("明细 Lines")
    _header(
        lines,
        "时间 Time",
        "类型 Kind",
        "方式 Method",
        "账户 Account",
        "房间 Room",
        "单号 Receipt no",
        "金额(元) Amount (yuan)",
        "经办 Operator",
        "付款人 Payer",
        "备注 Memo",
    )
    for line in report.lines:
        lines.append(
            [
                line.at.strftime("%Y-%m-%d %H:%M:%S"),
                _KIND_NAMES[line.kind],
                METHOD_NAMES.get(line.method, line.method),
                line.account_number,
                line.room,
                line.receipt_no,
                _yuan(line.amount_fen),
                line.operator,
                line.payer_name,
                line.memo,
            ]
        )
        lines.cell(lines.max_row, 7).number_format = _MONEY

    tie = book.create_sheet("核对 Tie-out")
    _header(tie, "项目 Item", "金额(元) Amount (yuan)")
    for label, fen in (
        ("报表合计 Report total", report.report_total_fen),
        ("账簿 cash 科目合计 Ledger legs on the takings", report.ledger_total_fen),
        ("差额 Difference", report.difference_fen),
        ("微信支付订单 WeChat Pay orders paid", report.wechat_orders.total_fen),
        ("差额 WeChat difference", report.wechat_difference_fen),
    ):
        tie.append([label, _yuan(fen)])
        tie.cell(tie.max_row, 2).number_format = _MONEY
    for line in report.unexplained:
        tie.append([f"未归类 Unexplained {line.key}", _yuan(line.amount_fen)])
        tie.cell(tie.max_row, 2).number_format = _MONEY
    out = BytesIO()
    book.save(out)
    return out.getvalue()
