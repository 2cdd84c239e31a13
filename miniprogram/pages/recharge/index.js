/**
 * Recharge: the amount → POST /tenant/accounts/{id}/orders → wx.requestPayment with exactly the
 * parameters the cloud signed → ask the cloud until the order is credited (WeChat Pay tells the cloud,
 * not the phone, so success on the phone is "paid, waiting"; the balance shown is the cloud's).
 */
const api = require('../../utils/api')
const config = require('../../config')
const { strings, t } = require('../../utils/i18n')
const { fenToYuan, yuanToFen } = require('../../utils/money')

const MIN_FEN = 100
const MAX_FEN = 500000
const PRESETS = [5000, 10000, 20000, 50000]

function requestPayment(pay) {
  return new Promise((resolve, reject) => {
    wx.requestPayment({
      timeStamp: pay.timeStamp,
      nonceStr: pay.nonceStr,
      package: pay.package,
      signType: pay.signType,
      paySign: pay.paySign,
      success: resolve,
      fail: reject
    })
  })
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

Component({
  data: {
    s: {},
    accountId: 0,
    presets: PRESETS.map((fen) => ({ fen, label: fenToYuan(fen).replace(/\.00$/, '') })),
    chosen: 10000,
    custom: '',
    busy: false,
    status: '',
    message: '',
    error: ''
  },
  methods: {
    onLoad(options) {
      this.setData({ s: strings(), accountId: Number((options && options.account) || 0) })
    },
    choose(e) {
      this.setData({ chosen: Number(e.currentTarget.dataset.fen), custom: '', error: '' })
    },
    onCustom(e) {
      this.setData({ custom: e.detail.value, error: '' })
    },
    amountFen() {
      return this.data.custom ? yuanToFen(this.data.custom) : this.data.chosen
    },
    async pay() {
      const fen = this.amountFen()
      if (fen == null || fen < MIN_FEN || fen > MAX_FEN) {
        this.setData({ error: t('amountRange') })
        return
      }
      const id = this.data.accountId
      this.setData({ busy: true, error: '', status: 'paying', message: t('paying') })
      try {
        const order = await api.createOrder(id, fen)
        if (!order.pay) throw new api.ApiError(409, t('payFailed', { reason: order.state }))
        try {
          await requestPayment(order.pay)
        } catch (err) {
          const cancelled = /cancel/.test((err && err.errMsg) || '')
          this.setData({
            status: cancelled ? 'cancelled' : 'failed',
            message: cancelled ? t('cancelled') : t('payFailed', { reason: (err && err.errMsg) || '' })
          })
          return
        }
        this.setData({ status: 'waiting', message: t('waiting') })
        if (await this.credited(id, order.out_trade_no)) {
          const account = await api.account(id)
          this.setData({ status: 'credited', message: t('credited', { balance: fenToYuan(account.balance_fen) }) })
        } else {
          this.setData({ status: 'pending', message: t('notYet') })
        }
      } catch (err) {
        this.setData({ status: 'failed', message: '', error: err.message })
      } finally {
        this.setData({ busy: false })
      }
    },
    async credited(id, outTradeNo) {
      for (let i = 0; i < config.pollMaxTries; i += 1) {
        const orders = await api.orders(id)
        const mine = orders.find((o) => o.out_trade_no === outTradeNo)
        if (mine && mine.state === 'paid') return true
        await sleep(config.pollIntervalMs)
      }
      return false
    }
  }
})
