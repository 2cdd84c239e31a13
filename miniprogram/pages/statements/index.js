/** Statements: each movement of the wallet; a charge explains its meter, reading interval and units. */
const api = require('../../utils/api')
const { strings, t } = require('../../utils/i18n')
const { fenToYuan } = require('../../utils/money')

const when = (iso) => (iso ? String(iso).slice(0, 16).replace('T', ' ') : '')

function explainLines(kind, explain) {
  const e = explain || {}
  if (kind === 'charge') {
    const lines = []
    if (e.meter) lines.push(`${e.meter}`)
    if (e.from || e.to) lines.push(`${when(e.from)} → ${when(e.to)}`)
    if (e.units) lines.push(`${e.units}`)
    return lines
  }
  return ['receipt', 'out_trade_no'].filter((k) => e[k]).map((k) => `${e[k]}`)
}

function entryView(row) {
  return {
    id: row.entry_id,
    at: when(row.at),
    kind: t(`kind_${row.kind}`),
    amount: (row.amount_fen > 0 ? '+' : '') + fenToYuan(row.amount_fen),
    credit: row.amount_fen > 0,
    memo: row.memo,
    lines: explainLines(row.kind, row.explain)
  }
}

Component({
  data: { s: {}, accountId: 0, entries: [], loaded: false, error: '' },
  methods: {
    async onLoad(options) {
      this.setData({ s: strings(), accountId: Number((options && options.account) || 0) })
      try {
        const rows = await api.statement(this.data.accountId)
        this.setData({ entries: rows.map(entryView), loaded: true })
      } catch (err) {
        this.setData({ error: err.message })
      }
    }
  }
})
