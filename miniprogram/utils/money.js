/** Money is integer fen everywhere; yuan only as text, converted with integer arithmetic. */

function fenToYuan(fen) {
  if (!Number.isInteger(fen)) return '—'
  const sign = fen < 0 ? '-' : ''
  const abs = Math.abs(fen)
  const cents = String(abs % 100).padStart(2, '0')
  return `${sign}${Math.floor(abs / 100)}.${cents}`
}

const YUAN = /^(\d{1,7})(?:\.(\d{1,2}))?$/

/** "12.3" → 1230; null for anything that is not a plain non-negative amount with at most 2 decimals. */
function yuanToFen(text) {
  const found = YUAN.exec(String(text == null ? '' : text).trim())
  if (!found) return null
  return Number(found[1]) * 100 + Number((found[2] || '').padEnd(2, '0'))
}

module.exports = { fenToYuan, yuanToFen }
