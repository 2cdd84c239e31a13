"""The console's words in zh-CN (the default) and English: one small catalogue of ours.

Why not Babel: the console has a few hundred short labels and no plural rules worth the tooling; a
dict keeps both languages side by side, so a missing translation is visible in review (a test checks
that every key has both). The language is a cookie set by the switch in the header.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["DEFAULT", "LANGS", "LANG_COOKIE", "MESSAGES", "translator"]

LANG_COOKIE = "mf_lang"
DEFAULT = "zh-CN"
LANGS = ("zh-CN", "en")

MESSAGES: dict[str, tuple[str, str]] = {
    "app": ("Meterflow 物业管理控制台", "Meterflow property console"),
    "login": ("登录", "Log in"),
    "logout": ("退出", "Log out"),
    "username": ("用户名", "Username"),
    "password": ("密码", "Password"),
    "login_failed": ("用户名或密码错误", "Wrong username or password"),
    "login_throttled": ("登录失败次数过多，请稍后再试", "Too many failed logins; try again later"),
    "tenant_elsewhere": (
        "租户请使用手机 H5 页面查看账户。",
        "Tenants see their accounts on the mobile H5 page.",
    ),
    "assets_missing": (
        "前端资源未安装（请运行 make install）：实时刷新和图表不可用。缺少：",
        "Front-end assets are not installed (run make install): live updates and charts are off. Missing: ",
    ),
    "dashboard": ("概览", "Dashboard"),
    "monitor": ("房间监控", "Room monitor"),
    "holds": ("挂起读数", "Held readings"),
    "approvals": ("待审批", "Approvals"),
    "reports": ("报表", "Reports"),
    "role": ("角色", "Role"),
    "forbidden": ("无权访问", "Not allowed"),
    "not_found": ("未找到", "Not found"),
    "conflict": ("无法执行", "Cannot do that"),
    "error": ("出错了", "Something went wrong"),
    "back": ("返回", "Back"),
    "online_rate": ("在线率", "Online rate"),
    "meters": ("表计", "Meters"),
    "rooms_off": ("断电房间", "Rooms off"),
    "in_arrears": ("欠费账户", "In arrears"),
    "alarms": ("告警", "Alarms"),
    "open_alarms": ("未清除告警", "Open alarms"),
    "holds_waiting": ("待处理挂起读数", "Holds waiting"),
    "today": ("今日", "Today"),
    "yesterday": ("昨日", "Yesterday"),
    "spend": ("电费", "Spend"),
    "use": ("用量", "Use"),
    "today_vs_yesterday": ("今日与昨日", "Today vs yesterday"),
    "building": ("楼栋", "Building"),
    "floor": ("楼层", "Floor"),
    "room": ("房间", "Room"),
    "meter": ("表计", "Meter"),
    "all": ("全部", "All"),
    "online": ("在线", "Online"),
    "offline": ("离线", "Offline"),
    "relay": ("继电器", "Relay"),
    "relay_open": ("断开", "Off"),
    "relay_closed": ("合闸", "On"),
    "unknown": ("未知", "Unknown"),
    "balance": ("余额", "Balance"),
    "account": ("账户", "Account"),
    "protected": ("保电", "Protected"),
    "filter": ("筛选", "Filter"),
    "search": ("搜索", "Search"),
    "status": ("状态", "Status"),
    "off_only": ("仅断电", "Off only"),
    "offline_only": ("仅离线", "Offline only"),
    "arrears_only": ("仅欠费", "In arrears only"),
    "next_page": ("下一页", "Next page"),
    "first_page": ("首页", "First page"),
    "selected": ("已选", "Selected"),
    "reason": ("原因", "Reason"),
    "reason_required": ("请填写原因", "A reason is required"),
    "trip": ("拉闸", "Trip"),
    "close": ("合闸", "Restore"),
    "protect": ("保电", "Protect"),
    "unprotect": ("取消保电", "Unprotect"),
    "batch_done": ("已下发指令", "Commands queued"),
    "nothing_selected": ("未选择表计", "No meter selected"),
    "detail": ("详情", "Detail"),
    "curve": ("用电曲线", "Usage curve"),
    "readings": ("读数", "Readings"),
    "commands": ("指令", "Commands"),
    "time": ("时间", "Time"),
    "action": ("操作", "Action"),
    "issued_at": ("下发时间", "Issued"),
    "ack": ("回执", "Acknowledgement"),
    "verdict": ("原因", "Verdict"),
    "accept": ("接受为新基准", "Accept as new baseline"),
    "bill": ("按读数计费", "Bill as read"),
    "discard": ("丢弃", "Discard"),
    "resolved": ("已处理", "Resolved"),
    "money": ("资金操作", "Money"),
    "recharge": ("充值", "Recharge"),
    "refund": ("退费", "Refund"),
    "correction": ("调账", "Correction"),
    "amount_yuan": ("金额（元）", "Amount (yuan)"),
    "receipt_no": ("收据号", "Receipt no."),
    "submit": ("提交", "Submit"),
    "posted": ("已入账", "Posted"),
    "pending_approval": ("超过限额，已提交审批", "Above the limit: waiting for approval"),
    "approve": ("批准", "Approve"),
    "reject": ("驳回", "Reject"),
    "requested_by": ("申请人", "Requested by"),
    "kind": ("类型", "Kind"),
    "amount": ("金额", "Amount"),
    "no_rows": ("暂无数据", "Nothing here"),
    "statement": ("流水", "Statement"),
    "financial_trace": ("资金追溯", "Financial trace"),
    "month": ("月份", "Month"),
    "opening_balance": ("期初余额", "Opening balance"),
    "closing_balance": ("期末余额", "Closing balance"),
    "recharges": ("充值", "Recharges"),
    "deductions": ("扣费", "Deductions"),
    "refunds": ("退费", "Refunds"),
    "corrections": ("调账", "Corrections"),
    "reversals": ("冲正", "Reversals"),
    "other_moves": ("结算与转移", "Settlements and transfers"),
    "opening_reading": ("期初读数", "Opening reading"),
    "closing_reading": ("期末读数", "Closing reading"),
    "register": ("计费寄存器", "Tariff register"),
    "units": ("用量", "Units"),
    "export_excel": ("导出 Excel", "Export to Excel"),
    "show": ("查询", "Show"),
    "total": ("合计", "Total"),
    "ties_out": ("期初 + 发生额 = 期末", "Opening + movements = closing"),
    "energy_report": ("能耗报表", "Energy report"),
    "command_log": ("指令日志", "Command log"),
    "alarm_log": ("告警日志", "Alarm log"),
    "project": ("项目", "Project"),
    "truncated": (
        "仅显示前 5000 行：请缩小范围（楼栋或日期）",
        "Only the first 5,000 rows: narrow it down (building or day)",
    ),
    "language": ("English", "中文"),
}


def translator(lang: str) -> Callable[[str], str]:
    """``t(key)`` in ``lang``; an unknown key shows itself (visible, never a crash)."""
    index = 1 if lang == "en" else 0

    def t(key: str) -> str:
        pair = MESSAGES.get(key)
        return pair[index] if pair else key

    return t
