"""The words of the console's cashier report, zh-CN first, merged into
:data:`cloud.console.i18n.MESSAGES` (their own module, as :mod:`cloud.console.i18n_accounts`)."""

from __future__ import annotations

__all__ = ["CASHIER_MESSAGES"]

CASHIER_MESSAGES: dict[str, tuple[str, str]] = {
    "cashier_report": ("收银日报", "Cashier report"),
    "day": ("日期", "Day"),
    "ties_out": ("与账务一致", "Ties out to the ledger"),
    "does_not_tie_out": ("与账务不一致", "Does not tie out to the ledger"),
    "report_total": ("报表合计", "Report total"),
    "ledger_total": ("账务合计", "Ledger total"),
    "wechat_orders": ("微信支付订单", "WeChat Pay orders"),
    "method": ("方式", "Method"),
    "count": ("笔数", "Count"),
    "receipts": ("收款明细", "Receipts"),
    "operator": ("操作员", "Operator"),
    "payer": ("交款人", "Payer"),
    "unexplained": ("无法归类的收款流水", "Takings entries the report cannot explain"),
    "method_cash": ("现金", "Cash"),
    "method_bank_transfer": ("银行转账", "Bank transfer"),
    "method_wechat": ("微信支付", "WeChat Pay"),
}
