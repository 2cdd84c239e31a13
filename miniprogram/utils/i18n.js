/** zh-CN first, English on request; the choice is kept in storage ("lang"). */

const TEXT = {
  zh: {
    appName: '智能电表缴费',
    login: '微信一键登录',
    loggingIn: '正在登录…',
    bindTitle: '绑定房间',
    scan: '扫描房间二维码',
    accountNumber: '户号',
    phone: '预留手机号',
    bindByPhone: '用户号和手机号绑定',
    needNumberAndPhone: '请填写户号和手机号',
    balance: '余额（元）',
    daysLeft: '按近期用量约可用 {n} 天',
    daysUnknown: '暂无近期用量',
    supply_on: '供电中',
    supply_off: '已断电',
    supply_restoring: '恢复供电中…',
    supply_cutting: '断电中…',
    recharge: '充值',
    usage: '用量',
    statements: '账单明细',
    settings: '设置',
    noAccounts: '还没有绑定房间',
    bindNow: '去绑定',
    amount: '充值金额（元）',
    otherAmount: '其他金额',
    pay: '微信支付',
    amountRange: '请输入 1 – 5000 元的金额',
    paying: '正在支付…',
    waiting: '支付成功，等待到账…',
    credited: '已到账，当前余额 {balance} 元',
    cancelled: '已取消支付',
    payFailed: '支付未完成：{reason}',
    notYet: '暂未确认到账，请稍后在账单中查看',
    byDay: '按日',
    byMonth: '按月',
    charged: '扣费（元）',
    noUsage: '暂无用量',
    noEntries: '暂无账单',
    kind_recharge: '充值',
    kind_charge: '用电/用水扣费',
    kind_refund: '退款',
    kind_reversal: '冲正',
    kind_correction: '调账',
    kind_settlement: '结清',
    kind_transfer: '转入/转出',
    language: 'Language / 语言',
    notifications: '消息提醒',
    subscribe: '开启余额不足、到账和恢复供电提醒',
    subscribed: '已开启 {n} 项提醒',
    subscribeNone: '未开启提醒',
    networkError: '网络不可用，请稍后重试',
    sessionExpired: '登录已过期，请重新登录'
  },
  en: {
    appName: 'Meter top-up',
    login: 'Log in with WeChat',
    loggingIn: 'Logging in…',
    bindTitle: 'Bind a room',
    scan: 'Scan the room QR code',
    accountNumber: 'Account number',
    phone: 'Phone number on file',
    bindByPhone: 'Bind by account number and phone',
    needNumberAndPhone: 'Enter the account number and the phone number',
    balance: 'Balance (yuan)',
    daysLeft: 'About {n} days left at recent usage',
    daysUnknown: 'No recent usage',
    supply_on: 'Supply on',
    supply_off: 'Supply off',
    supply_restoring: 'Restoring…',
    supply_cutting: 'Cutting…',
    recharge: 'Recharge',
    usage: 'Usage',
    statements: 'Statements',
    settings: 'Settings',
    noAccounts: 'No room bound yet',
    bindNow: 'Bind a room',
    amount: 'Amount (yuan)',
    otherAmount: 'Other amount',
    pay: 'Pay with WeChat',
    amountRange: 'Enter an amount between 1 and 5000 yuan',
    paying: 'Paying…',
    waiting: 'Paid, waiting for the credit…',
    credited: 'Credited, balance now {balance} yuan',
    cancelled: 'Payment cancelled',
    payFailed: 'Payment not completed: {reason}',
    notYet: 'Not confirmed yet; check the statement later',
    byDay: 'By day',
    byMonth: 'By month',
    charged: 'Charged (yuan)',
    noUsage: 'No usage yet',
    noEntries: 'No entries yet',
    kind_recharge: 'Recharge',
    kind_charge: 'Consumption',
    kind_refund: 'Refund',
    kind_reversal: 'Reversal',
    kind_correction: 'Adjustment',
    kind_settlement: 'Settlement',
    kind_transfer: 'Transfer',
    language: 'Language / 语言',
    notifications: 'Notifications',
    subscribe: 'Notify me of low balance, payments and restored supply',
    subscribed: '{n} notifications on',
    subscribeNone: 'No notifications on',
    networkError: 'Network unavailable, try again later',
    sessionExpired: 'Session expired, please log in again'
  }
}

const LANGS = ['zh', 'en']

function getLang() {
  const lang = wx.getStorageSync('lang')
  return LANGS.includes(lang) ? lang : 'zh'
}

function setLang(lang) {
  wx.setStorageSync('lang', LANGS.includes(lang) ? lang : 'zh')
}

function t(key, vars) {
  const table = TEXT[getLang()]
  let text = key in table ? table[key] : TEXT.zh[key] || key
  Object.keys(vars || {}).forEach((name) => {
    text = text.replace(`{${name}}`, String(vars[name]))
  })
  return text
}

/** Every string of the current language, for a page's data (WXML cannot call functions). */
function strings() {
  return Object.assign({}, TEXT.zh, TEXT[getLang()])
}

module.exports = { LANGS, TEXT, getLang, setLang, strings, t }
