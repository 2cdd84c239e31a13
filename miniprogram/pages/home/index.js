/** Home: each bound account's balance, "about N days left", and each meter's supply (incl. restoring…). */
const api = require('../../utils/api')
const { strings, t } = require('../../utils/i18n')
const { fenToYuan } = require('../../utils/money')

const TAGS = { on: 'success', off: 'danger', restoring: 'warning', cutting: 'warning' }

function accountView(a) {
  return {
    id: a.id,
    number: a.number,
    project: a.project,
    balance: fenToYuan(a.balance_fen),
    low: a.balance_fen <= 0,
    days: a.days_left == null ? t('daysUnknown') : t('daysLeft', { n: a.days_left }),
    meters: (a.meters || []).map((m) => ({
      id: m.id,
      device: m.device_id,
      supply: m.supply,
      label: t(`supply_${m.supply}`),
      tag: TAGS[m.supply] || 'default'
    }))
  }
}

Component({
  data: { s: {}, accounts: [], loaded: false, error: '' },
  methods: {
    onLoad() {
      this.setData({ s: strings() })
    },
    onShow() {
      return this.refresh()
    },
    onPullDownRefresh() {
      return this.refresh().then(() => wx.stopPullDownRefresh())
    },
    async refresh() {
      if (!api.loggedIn()) {
        wx.reLaunch({ url: '/pages/login/index' })
        return
      }
      try {
        const rows = await api.accounts()
        this.setData({ accounts: rows.map(accountView), loaded: true, error: '' })
      } catch (err) {
        this.setData({ error: err.message })
        if (err.status === 401) wx.reLaunch({ url: '/pages/login/index' })
      }
    },
    recharge(e) {
      wx.navigateTo({ url: `/pages/recharge/index?account=${e.currentTarget.dataset.id}` })
    },
    usage(e) {
      wx.navigateTo({ url: `/pages/usage/index?account=${e.currentTarget.dataset.id}` })
    },
    statements(e) {
      wx.navigateTo({ url: `/pages/statements/index?account=${e.currentTarget.dataset.id}` })
    },
    goBind() {
      wx.navigateTo({ url: '/pages/bind/index' })
    },
    settings(e) {
      const id = e && e.currentTarget && e.currentTarget.dataset.id
      wx.navigateTo({ url: id ? `/pages/settings/index?account=${id}` : '/pages/settings/index' })
    }
  }
})
