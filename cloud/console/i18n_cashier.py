"""The words of the console's cashier report and of "my notices", zh-CN first, merged into
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
    "my_notices": ("我的通知", "My notices"),
    "my_notices_help": (
        "管理通知（网关离线、待处理读数、充值写表失败）只发给勾选了它的人，按项目的通知渠道顺序发送。",
        "Manager notices (gateway offline, held readings, top-ups not written) go only to those who "
        "tick them, through the project's channels in order.",
    ),
    "my_notices_platform": (
        "平台管理员不属于任何机构，不接收管理通知。",
        "Platform administrators belong to no organisation and receive no manager notices.",
    ),
    "saved": ("已保存", "Saved"),
    "phone": ("手机号", "Phone"),
    "wechat_openid": ("公众号 OpenID", "Official-account OpenID"),
    "notice_language": ("通知语言", "Notice language"),
    "manager_notices": ("接收的管理通知", "Manager notices to receive"),
    "notice_gateway_offline": ("网关离线", "Gateway offline"),
    "notice_holds_waiting": ("有待处理的挂起读数", "Held readings waiting"),
    "notice_topup_failed": ("充值未写入表计", "Top-up not written to the meter"),
}
