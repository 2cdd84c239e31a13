/** Usage: what was charged per day (30 days) or month (12 months), as bars scaled to the largest. */
const api = require('../../utils/api')
const { strings } = require('../../utils/i18n')
const { fenToYuan } = require('../../utils/money')

const PERIODS = { day: 30, month: 12 }

function bars(rows) {
  const top = Math.max(1, ...rows.map((r) => r.charged_fen))
  return rows.map((r) => ({
    period: r.period,
    yuan: fenToYuan(r.charged_fen),
    width: Math.round((Math.max(0, r.charged_fen) * 100) / top),
    units: Object.keys(r.units || {})
      .map((k) => `${r.units[k]} ${k}`)
      .join(' · ')
  }))
}

Component({
  data: { s: {}, accountId: 0, by: 'day', bars: [], loaded: false, error: '' },
  methods: {
    onLoad(options) {
      this.setData({ s: strings(), accountId: Number((options && options.account) || 0) })
      return this.load()
    },
    switchBy(e) {
      this.setData({ by: e.currentTarget.dataset.by })
      return this.load()
    },
    async load() {
      try {
        const rows = await api.usage(this.data.accountId, this.data.by, PERIODS[this.data.by])
        this.setData({ bars: bars(rows), loaded: true, error: '' })
      } catch (err) {
        this.setData({ error: err.message })
      }
    }
  }
})
