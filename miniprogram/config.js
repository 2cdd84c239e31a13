/**
 * The one place to point the mini-program at a Meterflow cloud (docs/payments.md, "Mini-program").
 * apiBaseUrl: the cloud's API root; it must be listed as a "request legal domain" of the
 * mini-program in the WeChat admin console (https only in production).
 * subscribeTemplates: subscribe-message template ids of this mini-program (WeChat admin console,
 * 订阅消息); empty ids are skipped.
 */
module.exports = {
  apiBaseUrl: 'https://meterflow.example.com/api/v1',
  subscribeTemplates: {
    lowBalance: '',
    paymentSucceeded: '',
    supplyRestored: ''
  },
  // after wx.requestPayment succeeds, ask the cloud whether the order is credited every pollIntervalMs
  pollIntervalMs: 2000,
  pollMaxTries: 30
}
