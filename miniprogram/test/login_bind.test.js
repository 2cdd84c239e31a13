const config = require('../config')
const { fakeCloud, loadPage, platform, reply, settle, tap, text } = require('./helpers')

let nav
beforeEach(() => {
  nav = platform()
  wx.login = jest.fn((o) => o.success({ code: 'wx-code-1', errMsg: 'login:ok' }))
})

test('login sends the wx.login code as a mini-program login and keeps the payer token', async () => {
  const requests = fakeCloud({ 'POST /tenant/login': () => ({ token: 'payer-token', accounts: 1 }) })
  const page = loadPage('login')
  page.instance.onLoad()
  expect(text(page, '.login')).toBe('微信一键登录')
  tap(page, '.login')
  await settle()
  expect(requests).toEqual([
    expect.objectContaining({ method: 'POST', path: '/tenant/login', data: { code: 'wx-code-1', app: 'miniprogram' } })
  ])
  expect(requests[0].header.Authorization).toBeUndefined()
  expect(wx.getStorageSync('payerToken')).toBe('payer-token')
  expect(nav).toEqual([['reLaunch', '/pages/home/index']])
})

test('a payer with nothing bound goes to bind; a refused login shows the cloud\'s message', async () => {
  let answer = { token: 't', accounts: 0 }
  fakeCloud({ 'POST /tenant/login': () => answer })
  const page = loadPage('login')
  page.instance.onLoad()
  tap(page, '.login')
  await settle()
  expect(nav).toEqual([['redirectTo', '/pages/bind/index']])
  answer = reply(401, { error: 'unauthorised', detail: '微信登录失败 / WeChat login failed' })
  tap(page, '.login')
  await settle()
  expect(text(page, '.error')).toBe('微信登录失败 / WeChat login failed')
  expect(nav).toHaveLength(1)
})

test('scanning a room code binds it, with the payer token; a URL carrying the code works too', async () => {
  wx.setStorageSync('payerToken', 'payer-token')
  const requests = fakeCloud({ 'POST /tenant/bindings/qr': () => [{ id: 7, number: 'A-1' }] })
  wx.scanCode = jest.fn((o) => o.success({ result: 'https://mf.example.com/bind?code=r1.5.1790000000.abcDEF', errMsg: 'scanCode:ok' }))
  const page = loadPage('bind')
  page.instance.onLoad({})
  tap(page, '.scan')
  await settle()
  expect(wx.scanCode).toHaveBeenCalledWith(expect.objectContaining({ scanType: ['qrCode'] }))
  expect(requests).toEqual([
    expect.objectContaining({ method: 'POST', path: '/tenant/bindings/qr', data: { code: 'r1.5.1790000000.abcDEF' } })
  ])
  expect(requests[0].header.Authorization).toBe('Bearer payer-token')
  expect(nav).toEqual([['reLaunch', '/pages/home/index']])
})

test('binding by account number and phone; a cancelled scan is silent; refusals are shown', async () => {
  wx.setStorageSync('payerToken', 'payer-token')
  let answer = reply(429, { error: 'too_many', detail: '今日尝试次数过多 / too many tries today' })
  const requests = fakeCloud({ 'POST /tenant/bindings/phone': () => answer })
  wx.scanCode = jest.fn((o) => o.fail({ errMsg: 'scanCode:fail cancel' }))
  const page = loadPage('bind')
  page.instance.onLoad({})
  tap(page, '.scan')
  tap(page, '.by-phone')
  await settle()
  expect(text(page, '.error')).toBe('请填写户号和手机号')
  expect(requests).toEqual([])
  page.querySelector('.number').dispatchEvent('input', { detail: { value: ' A-1 ' } })
  page.querySelector('.phone').dispatchEvent('input', { detail: { value: '13800138000' } })
  tap(page, '.by-phone')
  await settle()
  expect(requests.map((r) => r.data)).toEqual([{ account_number: 'A-1', phone: '13800138000' }])
  expect(text(page, '.error')).toBe('今日尝试次数过多 / too many tries today')
  answer = [{ id: 7 }]
  tap(page, '.by-phone')
  await settle()
  expect(nav).toEqual([['reLaunch', '/pages/home/index']])
  expect(config.apiBaseUrl).toMatch(/^https:\/\//)
})
