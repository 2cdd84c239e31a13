const config = require('../config')
const { getLang } = require('../utils/i18n')
const { fakeCloud, loadPage, platform, reply, settle, tap, text, texts } = require('./helpers')

beforeEach(() => {
  platform()
  wx.setStorageSync('payerToken', 'payer-token')
})

test('usage: bars scaled to the largest day; switching to months asks for 12 months', async () => {
  const requests = fakeCloud({
    'GET /tenant/accounts/7/usage': (req) =>
      req.path.includes('by=day')
        ? [
            { period: '2026-11-21', charged_fen: 250, units: { kWh: '4.17' } },
            { period: '2026-11-22', charged_fen: 1000, units: { kWh: '16.67' } },
            { period: '2026-11-23', charged_fen: 0, units: {} }
          ]
        : [{ period: '2026-11', charged_fen: 31000, units: { kWh: '516.67', 'm³': '3.2' } }]
  })
  const page = loadPage('usage')
  await page.instance.onLoad({ account: '7' })
  await settle()
  expect(requests[0].path).toBe('/tenant/accounts/7/usage?by=day&periods=30')
  expect(texts(page, '.amount')).toEqual(['2.50', '10.00', '0.00'])
  expect(page.querySelectorAll('.bar').map((b) => b.dom.getAttribute('style'))).toEqual([
    'width: 25%', // 250 of 1000 fen
    'width: 100%',
    'width: 0%'
  ])
  tap(page, '.by-month')
  await settle()
  expect(requests[1].path).toBe('/tenant/accounts/7/usage?by=month&periods=12')
  expect(texts(page, '.units')).toEqual(['516.67 kWh · 3.2 m³'])
})

test('statements: each movement signed, named, and a charge explained', async () => {
  fakeCloud({
    'GET /tenant/accounts/7/statement': () => [
      {
        entry_id: 2,
        at: '2026-11-23T10:05:00+08:00',
        kind: 'charge',
        amount_fen: -123,
        memo: 'consumption',
        key: 'charge:1',
        explain: { meter: 'm1', from: '2026-11-23T09:00:00+08:00', to: '2026-11-23T10:00:00+08:00', units: '2.05' }
      },
      {
        entry_id: 1,
        at: '2026-11-23T08:00:00+08:00',
        kind: 'recharge',
        amount_fen: 5000,
        memo: '微信支付充值 MF7-0001',
        key: 'recharge:wechat:MF7-0001',
        explain: { method: 'wechat', out_trade_no: 'MF7-0001' }
      }
    ]
  })
  const page = loadPage('statements')
  await page.instance.onLoad({ account: '7' })
  await settle()
  expect(texts(page, '.kind')).toEqual(['用电/用水扣费', '充值'])
  expect(texts(page, '.entry .amount')).toEqual(['-1.23', '+50.00'])
  expect(texts(page, '.explain')).toEqual(['m1', '2026-11-23 09:00 → 2026-11-23 10:00', '2.05', 'MF7-0001'])
})

test('statements: the cloud\'s refusal is shown', async () => {
  fakeCloud({ 'GET /tenant/accounts/9/statement': () => reply(404, { error: 'not_found', detail: 'account 9 not found' }) })
  const page = loadPage('statements')
  await page.instance.onLoad({ account: '9' })
  await settle()
  expect(text(page, '.error')).toBe('account 9 not found')
})

test('subscribe consent: each accept is reported for the account the tenant came from, rejects are not', async () => {
  config.subscribeTemplates = { lowBalance: 'TPL-LOW', paymentSucceeded: 'TPL-PAID', supplyRestored: 'TPL-ON' }
  const requests = fakeCloud({
    'POST /tenant/accounts/7/subscriptions': (req) => reply(201, { template_id: req.data.template_id, remaining: 1 })
  })
  wx.requestSubscribeMessage = jest.fn((o) =>
    o.success({ errMsg: 'requestSubscribeMessage:ok', 'TPL-LOW': 'accept', 'TPL-PAID': 'reject', 'TPL-ON': 'accept' })
  )
  const page = loadPage('settings')
  page.instance.onLoad({ account: '7' })
  tap(page, '.subscribe')
  await settle()
  expect(wx.requestSubscribeMessage.mock.calls[0][0].tmplIds).toEqual(['TPL-LOW', 'TPL-PAID', 'TPL-ON'])
  expect(requests.map((r) => [r.method, r.path, r.data])).toEqual([
    ['POST', '/tenant/accounts/7/subscriptions', { template_id: 'TPL-LOW', app: 'miniprogram' }],
    ['POST', '/tenant/accounts/7/subscriptions', { template_id: 'TPL-ON', app: 'miniprogram' }]
  ])
  expect(requests[0].header.Authorization).toBe('Bearer payer-token')
  expect(text(page, '.result')).toBe('已开启 2 项提醒')
})

test('subscribe consent: all rejected → nothing reported; the cloud refusing → its message shown', async () => {
  config.subscribeTemplates = { lowBalance: 'TPL-LOW', paymentSucceeded: '', supplyRestored: '' }
  const requests = fakeCloud({
    'POST /tenant/accounts/9/subscriptions': () => reply(404, { error: 'not_found', detail: 'account 9 not found' })
  })
  wx.requestSubscribeMessage = jest.fn((o) => o.success({ errMsg: 'requestSubscribeMessage:ok', 'TPL-LOW': 'reject' }))
  const page = loadPage('settings')
  page.instance.onLoad({ account: '9' })
  tap(page, '.subscribe')
  await settle()
  expect(requests).toEqual([])
  expect(text(page, '.result')).toBe('未开启提醒')
  wx.requestSubscribeMessage = jest.fn((o) => o.success({ errMsg: 'requestSubscribeMessage:ok', 'TPL-LOW': 'accept' }))
  tap(page, '.subscribe')
  await settle()
  expect(requests.map((r) => r.path)).toEqual(['/tenant/accounts/9/subscriptions'])
  expect(text(page, '.error')).toBe('account 9 not found')
  expect(text(page, '.result')).toBe('未开启提醒')
})

test('settings without an account: the language only, no consent to ask', async () => {
  const requests = fakeCloud({})
  const page = loadPage('settings')
  page.instance.onLoad()
  expect(page.querySelector('.subscribe')).toBeFalsy()
  expect(requests).toEqual([])
})

test('language switch: English everywhere, kept for the next page', async () => {
  const page = loadPage('settings')
  page.instance.onLoad({ account: '7' })
  expect(text(page, '.subscribe')).toBe('开启余额不足、到账和恢复供电提醒')
  tap(page, '.lang-en')
  await settle()
  expect(getLang()).toBe('en')
  expect(text(page, '.subscribe')).toBe('Notify me of low balance, payments and restored supply')
  const login = loadPage('login')
  login.instance.onLoad()
  expect(text(login, '.login')).toBe('Log in with WeChat')
})
