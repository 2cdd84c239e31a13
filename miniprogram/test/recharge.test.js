const config = require('../config')
const { fakeCloud, loadPage, platform, reply, settle, tap, text } = require('./helpers')

const PAY = {
  appId: 'wx0000000000mini01',
  timeStamp: '1795399200',
  nonceStr: 'n0nce',
  package: 'prepay_id=wx2026112300000001',
  signType: 'RSA',
  paySign: 'c2lnbmF0dXJl'
}

function order(fen) {
  return { out_trade_no: 'MF7-0001', account_id: 7, amount_fen: fen, state: 'pending', pay: PAY }
}

beforeEach(() => {
  platform()
  wx.setStorageSync('payerToken', 'payer-token')
  config.pollIntervalMs = 0
  config.pollMaxTries = 5
})

test('a preset amount: order, wx.requestPayment with the signed params, then polled until credited', async () => {
  let polls = 0
  const requests = fakeCloud({
    'POST /tenant/accounts/7/orders': (req) => reply(201, order(req.data.amount_fen)),
    'GET /tenant/accounts/7/orders': () => {
      polls += 1
      return [{ out_trade_no: 'MF7-0001', state: polls < 3 ? 'pending' : 'paid' }]
    },
    'GET /tenant/accounts/7': () => ({ id: 7, balance_fen: 25000 })
  })
  wx.requestPayment = jest.fn((o) => o.success({ errMsg: 'requestPayment:ok' }))
  const page = loadPage('recharge')
  page.instance.onLoad({ account: '7' })
  page.querySelectorAll('.preset')[2].dispatchEvent('tap') // 200 元
  tap(page, '.pay')
  await settle(60)
  expect(requests[0]).toEqual(expect.objectContaining({ method: 'POST', path: '/tenant/accounts/7/orders', data: { amount_fen: 20000 } }))
  expect(wx.requestPayment).toHaveBeenCalledTimes(1)
  const { success, fail, ...passed } = wx.requestPayment.mock.calls[0][0]
  expect(passed).toEqual({
    timeStamp: '1795399200',
    nonceStr: 'n0nce',
    package: 'prepay_id=wx2026112300000001',
    signType: 'RSA',
    paySign: 'c2lnbmF0dXJl'
  })
  expect(polls).toBe(3)
  expect(text(page, '.status')).toBe('已到账，当前余额 250.00 元')
  expect(page.data.status).toBe('credited')
})

test('a typed amount is converted to fen exactly; out-of-range or malformed amounts send nothing', async () => {
  const requests = fakeCloud({ 'POST /tenant/accounts/7/orders': (req) => reply(201, order(req.data.amount_fen)) })
  wx.requestPayment = jest.fn((o) => o.fail({ errMsg: 'requestPayment:fail cancel' }))
  const page = loadPage('recharge')
  page.instance.onLoad({ account: '7' })
  for (const bad of ['0.99', '5000.01', 'abc', '-5', '1.234', '1e3']) {
    page.querySelector('.custom').dispatchEvent('input', { detail: { value: bad } })
    tap(page, '.pay')
    await settle()
    expect(text(page, '.error')).toBe('请输入 1 – 5000 元的金额')
  }
  expect(requests).toEqual([])
  page.querySelector('.custom').dispatchEvent('input', { detail: { value: '12.3' } })
  tap(page, '.pay')
  await settle()
  expect(requests.map((r) => r.data)).toEqual([{ amount_fen: 1230 }])
  // the tenant closed the payment sheet: said so, nothing polled
  expect(text(page, '.status')).toBe('已取消支付')
  expect(requests).toHaveLength(1)
})

test('the cloud refusing the order, and a payment never confirmed, are told apart', async () => {
  let answer = reply(409, { error: 'conflict', detail: '微信支付未开通 / WeChat Pay is not configured' })
  let polls = 0
  fakeCloud({
    'POST /tenant/accounts/7/orders': () => answer,
    'GET /tenant/accounts/7/orders': () => {
      polls += 1
      return [{ out_trade_no: 'MF7-0001', state: 'pending' }]
    }
  })
  wx.requestPayment = jest.fn((o) => o.success({ errMsg: 'requestPayment:ok' }))
  const page = loadPage('recharge')
  page.instance.onLoad({ account: '7' })
  tap(page, '.pay')
  await settle()
  expect(text(page, '.error')).toBe('微信支付未开通 / WeChat Pay is not configured')
  expect(wx.requestPayment).not.toHaveBeenCalled()
  answer = reply(201, { ...order(10000), state: 'closed', pay: null }) // an order WeChat Pay did not take
  tap(page, '.pay')
  await settle()
  expect(text(page, '.error')).toBe('支付未完成：closed')
  expect(wx.requestPayment).not.toHaveBeenCalled()
  answer = reply(201, order(10000))
  tap(page, '.pay')
  await settle(60)
  expect(polls).toBe(5) // config.pollMaxTries
  expect(text(page, '.status')).toBe('暂未确认到账，请稍后在账单中查看')
})
