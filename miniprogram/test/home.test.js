const { setLang } = require('../utils/i18n')
const { fakeCloud, loadPage, platform, reply, settle, tap, text, texts } = require('./helpers')

const ACCOUNTS = [
  {
    id: 7,
    number: 'A-1',
    project: '一期',
    status: 'open',
    balance_fen: 12345,
    credit_limit_fen: 0,
    daily_fen: 1000,
    days_left: 12,
    meters: [
      { id: 1, device_id: 'm1', kind: 'electric', supply: 'restoring', last_reading_at: null, last_register: null },
      { id: 2, device_id: 'w1', kind: 'water', supply: 'on', last_reading_at: null, last_register: null }
    ]
  },
  {
    id: 8,
    number: 'B-2',
    project: '二期',
    status: 'open',
    balance_fen: -305,
    credit_limit_fen: 0,
    daily_fen: null,
    days_left: null,
    meters: [{ id: 3, device_id: 'm3', kind: 'electric', supply: 'off', last_reading_at: null, last_register: null }]
  }
]

let nav
beforeEach(() => {
  nav = platform()
})

test('home shows each balance, days left and supply state (restoring…) from the cloud', async () => {
  wx.setStorageSync('payerToken', 'payer-token')
  const requests = fakeCloud({ 'GET /tenant/accounts': () => ACCOUNTS })
  const page = loadPage('home')
  page.instance.onLoad()
  await page.instance.onShow()
  await settle()
  expect(requests).toEqual([expect.objectContaining({ method: 'GET', path: '/tenant/accounts' })])
  expect(requests[0].header.Authorization).toBe('Bearer payer-token')
  expect(texts(page, '.balance')).toEqual(['123.45', '-3.05'])
  expect(page.querySelectorAll('.balance')[1].dom.className).toContain('low')
  expect(texts(page, '.days')).toEqual(['按近期用量约可用 12 天', '暂无近期用量'])
  expect(texts(page, '.supply')).toEqual(['恢复供电中…', '供电中', '已断电'])
  page.querySelectorAll('.recharge')[1].dispatchEvent('tap')
  await settle()
  expect(nav).toEqual([['navigateTo', '/pages/recharge/index?account=8']])
  page.querySelectorAll('.notify')[1].dispatchEvent('tap')
  await settle()
  // the settings page is told which account's notices the tenant consents to
  expect(nav[1]).toEqual(['navigateTo', '/pages/settings/index?account=8'])
})

test('English on request; an expired session goes back to login; no token goes to login at once', async () => {
  setLang('en')
  wx.setStorageSync('payerToken', 'payer-token')
  let answer = ACCOUNTS
  const requests = fakeCloud({ 'GET /tenant/accounts': () => answer })
  const page = loadPage('home')
  page.instance.onLoad()
  await page.instance.onShow()
  await settle()
  expect(texts(page, '.supply')).toEqual(['Restoring…', 'Supply on', 'Supply off'])
  expect(text(page, '.recharge')).toBe('Recharge')
  answer = reply(401, { error: 'unauthorised', detail: 'token expired' })
  await page.instance.onShow()
  await settle()
  expect(text(page, '.error')).toBe('token expired')
  expect(wx.getStorageSync('payerToken')).toBe('')
  expect(nav).toEqual([['reLaunch', '/pages/login/index']])
  await page.instance.onShow() // no token now: straight to login, no request
  expect(requests).toHaveLength(2)
  expect(nav).toHaveLength(2)
})

test('nothing bound: an invitation to bind', async () => {
  wx.setStorageSync('payerToken', 'payer-token')
  fakeCloud({ 'GET /tenant/accounts': () => [] })
  const page = loadPage('home')
  page.instance.onLoad()
  await page.instance.onShow()
  await settle()
  expect(text(page, '.empty')).toContain('还没有绑定房间')
  tap(page, '.bind-now')
  await settle()
  expect(nav).toEqual([['navigateTo', '/pages/bind/index']])
})
