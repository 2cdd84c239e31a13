/**
 * Bind an account: scan the room's QR code (its text, or a URL carrying it as ?code=) →
 * POST /tenant/bindings/qr; or the account number and the phone number the tenant gave the manager →
 * POST /tenant/bindings/phone. Then home.
 */
const api = require('../../utils/api')
const { strings, t } = require('../../utils/i18n')

function codeFrom(text) {
  const raw = String(text || '').trim()
  const found = /[?&]code=([^&#]+)/.exec(raw)
  return found ? decodeURIComponent(found[1]) : raw
}

Component({
  data: { s: {}, accountNumber: '', phone: '', busy: false, error: '' },
  methods: {
    onLoad(options) {
      this.setData({ s: strings() })
      // opened by scanning the room's code with WeChat itself: the QR text arrives as ?q=
      if (options && options.q) this.bindCode(decodeURIComponent(options.q))
    },
    onNumber(e) {
      this.setData({ accountNumber: e.detail.value })
    },
    onPhone(e) {
      this.setData({ phone: e.detail.value })
    },
    scan() {
      wx.scanCode({
        onlyFromCamera: false,
        scanType: ['qrCode'],
        success: (res) => this.bindCode(res.result),
        fail: (err) => {
          if (!/cancel/.test(err && err.errMsg)) this.setData({ error: err.errMsg })
        }
      })
    },
    async bindCode(text) {
      await this.bindWith(() => api.bindQr(codeFrom(text)))
    },
    async byPhone() {
      const number = this.data.accountNumber.trim()
      const phone = this.data.phone.trim()
      if (!number || !phone) {
        this.setData({ error: t('needNumberAndPhone') })
        return
      }
      await this.bindWith(() => api.bindPhone(number, phone))
    },
    async bindWith(call) {
      this.setData({ busy: true, error: '' })
      try {
        await call()
        wx.reLaunch({ url: '/pages/home/index' })
      } catch (err) {
        this.setData({ error: err.message })
      } finally {
        this.setData({ busy: false })
      }
    }
  }
})

module.exports = { codeFrom }
