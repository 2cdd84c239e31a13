/**
 * Test kit: pages rendered by miniprogram-simulate, and stand-ins for the WeChat platform only
 * (wx.request as a small scripted cloud, wx.login, wx.requestPayment, wx.scanCode,
 * wx.requestSubscribeMessage, navigation). Our own modules (api, i18n, money, config) run for real.
 */
const path = require('path')
const simulate = require('miniprogram-simulate')
const config = require('../config')

const ROOT = path.join(__dirname, '..')

const loaded = {}

/** A fresh instance of page ``name`` (each page's definition is loaded once per test file: the module
 * registry runs its Component() call only once). */
function loadPage(name) {
  if (!loaded[name]) {
    loaded[name] = simulate.load(path.join(ROOT, 'pages', name, 'index'), `page-${name}`, { rootPath: ROOT })
  }
  const page = simulate.render(loaded[name])
  page.attach(document.createElement('parent-wrapper'))
  return page
}

/** Let promises and zero-delay timers run (the pages await the scripted cloud). */
async function settle(rounds = 20) {
  for (let i = 0; i < rounds; i += 1) await new Promise((resolve) => setTimeout(resolve, 0))
}

class Reply {
  constructor(statusCode, data) {
    this.statusCode = statusCode
    this.data = data
  }
}

/** An answer other than 200 (0: the network failed). */
function reply(statusCode, data) {
  return new Reply(statusCode, data)
}

/**
 * wx.request answered by ``routes``: {"GET /tenant/accounts": (req) => body, or reply(status, body)}; every
 * request is recorded with its method, path (without the base URL), data and header. A route not
 * scripted answers 404, so a request the page should not make shows up as a failure.
 */
function fakeCloud(routes) {
  const requests = []
  wx.request = jest.fn((opts) => {
    expect(opts.url.startsWith(config.apiBaseUrl)).toBe(true)
    const route = opts.url.slice(config.apiBaseUrl.length)
    const req = { method: opts.method, path: route, data: opts.data, header: opts.header }
    requests.push(req)
    const handler = routes[`${opts.method} ${route.split('?')[0]}`]
    let answer = handler ? handler(req) : reply(404, { error: 'not_found', detail: `no route ${route}` })
    if (!(answer instanceof Reply)) answer = reply(200, answer)
    const { statusCode, data } = answer
    setTimeout(() => (statusCode === 0 ? opts.fail({ errMsg: 'request:fail' }) : opts.success({ statusCode, data })), 0)
  })
  return requests
}

function text(page, selector) {
  const node = page.querySelector(selector)
  return node ? node.dom.textContent.trim() : null
}

function texts(page, selector) {
  return page.querySelectorAll(selector).map((n) => n.dom.textContent.trim())
}

/** Events are delivered asynchronously: await settle() before looking at their effect. */
function tap(page, selector) {
  page.querySelector(selector).dispatchEvent('tap')
}

/** The phone's storage, kept in memory (miniprogram-simulate's wx storage stores nothing). */
function storage() {
  const store = new Map()
  wx.setStorageSync = jest.fn((key, value) => store.set(key, value))
  wx.getStorageSync = jest.fn((key) => (store.has(key) ? store.get(key) : ''))
  wx.removeStorageSync = jest.fn((key) => store.delete(key))
  wx.clearStorageSync = jest.fn(() => store.clear())
}

function platform() {
  storage()
  const nav = []
  wx.reLaunch = jest.fn((o) => nav.push(['reLaunch', o.url]))
  wx.redirectTo = jest.fn((o) => nav.push(['redirectTo', o.url]))
  wx.navigateTo = jest.fn((o) => nav.push(['navigateTo', o.url]))
  return nav
}

module.exports = { fakeCloud, loadPage, platform, reply, settle, tap, text, texts }
