/**
 * The Meterflow tenant API over wx.request: the payer token in storage, errors as ApiError with the
 * cloud's message (zh-CN first, as the cloud writes it).
 */
const config = require('../config')
const { t } = require('./i18n')

const TOKEN = 'payerToken'

class ApiError extends Error {
  constructor(status, message) {
    super(message)
    this.status = status
  }
}

function messageOf(status, body) {
  if (body && typeof body.detail === 'string') return body.detail
  if (body && Array.isArray(body.detail) && body.detail.length) {
    const first = body.detail[0]
    const field = Array.isArray(first.loc) ? first.loc[first.loc.length - 1] : ''
    return field ? `${field}: ${first.msg}` : String(first.msg)
  }
  if (status === 401) return t('sessionExpired')
  return `HTTP ${status}`
}

function request(method, path, data) {
  const token = wx.getStorageSync(TOKEN)
  const header = { 'content-type': 'application/json' }
  if (token) header.Authorization = `Bearer ${token}`
  return new Promise((resolve, reject) => {
    wx.request({
      url: config.apiBaseUrl + path,
      method,
      data,
      header,
      success(res) {
        if (res.statusCode >= 200 && res.statusCode < 300) {
          resolve(res.data)
          return
        }
        if (res.statusCode === 401) wx.removeStorageSync(TOKEN)
        reject(new ApiError(res.statusCode, messageOf(res.statusCode, res.data)))
      },
      fail() {
        reject(new ApiError(0, t('networkError')))
      }
    })
  })
}

function wxLogin() {
  return new Promise((resolve, reject) => {
    wx.login({
      success: (res) => (res.code ? resolve(res.code) : reject(new ApiError(0, t('networkError')))),
      fail: () => reject(new ApiError(0, t('networkError')))
    })
  })
}

/** wx.login → the cloud's payer token (kept in storage); resolves to the number of bound accounts. */
async function login() {
  const code = await wxLogin()
  const body = await request('POST', '/tenant/login', { code, app: 'miniprogram' })
  wx.setStorageSync(TOKEN, body.token)
  return body.accounts
}

function loggedIn() {
  return Boolean(wx.getStorageSync(TOKEN))
}

module.exports = {
  ApiError,
  TOKEN,
  loggedIn,
  login,
  request,
  accounts: () => request('GET', '/tenant/accounts'),
  account: (id) => request('GET', `/tenant/accounts/${id}`),
  bindQr: (code) => request('POST', '/tenant/bindings/qr', { code }),
  bindPhone: (accountNumber, phone) =>
    request('POST', '/tenant/bindings/phone', { account_number: accountNumber, phone }),
  usage: (id, by, periods) => request('GET', `/tenant/accounts/${id}/usage?by=${by}&periods=${periods}`),
  statement: (id) => request('GET', `/tenant/accounts/${id}/statement`),
  orders: (id) => request('GET', `/tenant/accounts/${id}/orders`),
  createOrder: (id, amountFen) => request('POST', `/tenant/accounts/${id}/orders`, { amount_fen: amountFen }),
  /** One more message of ``templateId`` allowed for this account (one tap on 允许 = one message). */
  subscribe: (accountId, templateId) =>
    request('POST', `/tenant/accounts/${accountId}/subscriptions`, { template_id: templateId, app: 'miniprogram' })
}
