"""The words of the gateway, provisioning-code and dead-letter pages (cloud/console/gateways.py),
zh-CN first, merged into :data:`cloud.console.i18n.MESSAGES` (their own module, so these pages add
lines without reordering the shared catalogue)."""

from __future__ import annotations

__all__ = ["GATEWAY_MESSAGES"]

GATEWAY_MESSAGES: dict[str, tuple[str, str]] = {
    "dead-letters": ("死信", "Dead letters"),
    "dl_help": (
        "网关发来但无法处理的消息，最新在前；只显示开头若干字节、总大小和 SHA-256，不显示完整内容",
        "Messages from gateways that could not be applied, newest first; only their first bytes, full "
        "size and SHA-256 are shown, never the whole message",
    ),
    "dl_all_gateways": ("全部网关", "All gateways"),
    "dl_topic": ("主题", "Topic"),
    "dl_reason": ("原因", "Reason"),
    "dl_size": ("大小（字节）", "Size (bytes)"),
    "dl_prefix": ("开头", "First bytes"),
    "dl_older": ("更早的", "Older"),
    "gw_done_assigned": (
        "已分配房间，网关将收到新的表计清单",
        "Assigned: the gateway gets its new meter list",
    ),
    "gw_done_overlap_ended": ("旧密钥已停用", "The older keys are retired"),
    "gw_meter_list": ("表计清单", "Meter list"),
    "gw_planned": ("由云端下发（已登记）", "From the cloud (registered with a code)"),
    "gw_by_hand": ("网关本地配置（edge.toml）", "The gateway's own edge.toml"),
    "gw_report": ("调试报告", "Commissioning report"),
    "gw_report_help": (
        "网关扫描并登记的表计；分配到房间后网关开始抄读",
        "The meters the gateway scanned and registered; a meter is polled once it is in a room",
    ),
    "gw_line": ("总线", "Line"),
    "gw_protocol": ("协议", "Protocol"),
    "gw_address": ("通信地址", "Address"),
    "gw_model": ("型号", "Model"),
    "gw_unassigned": ("未分配", "Unassigned"),
    "gw_assign": ("分配房间", "Assign to room"),
    "gw_keys": ("签名密钥", "Signing keys"),
    "gw_secret_once": (
        "新密钥只显示这一次，请立即安装到网关；之后只显示编号和日期",
        "The new key is shown this once: install it on the gateway now; afterwards only its id and "
        "dates are shown",
    ),
    "gw_install_key": (
        "在网关上运行（密钥从标准输入粘贴）：",
        "On the gateway run (paste the secret on stdin):",
    ),
    "gw_key_id": ("密钥编号", "Key id"),
    "gw_created": ("创建时间", "Created"),
    "gw_valid_until": ("有效期至", "Valid until"),
    "gw_seen": ("网关首次使用", "First used by the gateway"),
    "gw_not_seen": ("尚未使用", "Not used yet"),
    "gw_key_current": ("当前", "Current"),
    "gw_key_overlap": ("重叠期内有效", "Valid during the overlap"),
    "gw_key_retired": ("已停用", "Retired"),
    "gw_overlap": ("旧密钥重叠期", "Older keys stay valid for"),
    "gw_rotate": ("更换密钥", "Rotate key"),
    "gw_force": ("强制（网关尚未使用新密钥时会断开）", "Force (cuts the gateway off if it has not switched)"),
    "gw_end_overlap": ("结束重叠期", "End overlap"),
    "gw_new_code": ("新建登记码", "New provisioning code"),
    "gw_code": ("登记码", "Provisioning code"),
    "gw_code_once": (
        "登记码只显示这一次，只能使用一次；请交给安装人员",
        "The code is shown this once and works once: hand it to the installer",
    ),
    "gw_expires": ("有效期至", "Expires"),
    "gw_valid_for": ("有效时长", "Valid for"),
    "gw_command": ("安装人员在网关上扫描后运行：", "After the scan, the installer runs on the gateway:"),
    "gw_command_help": (
        "site.json 是扫描得到的调试报告（见 docs/installer.md）",
        "site.json is the scan's commissioning report (docs/installer.md)",
    ),
    "gw_url": ("地址", "Address"),
    "gw_transactions": ("通信次数", "Transactions"),
    "gw_timeouts": ("超时", "Timeouts"),
    "gw_errors": ("错误", "Errors"),
    "gw_utilisation": ("总线占用率", "Utilisation"),
    "gw_meters_online": ("在线表计", "Meters online"),
    "gw_meters_offline": ("离线表计", "Meters offline"),
}
