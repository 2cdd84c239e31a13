/**
 * Settings: the language (zh-CN / English), and consent to subscribe messages for the account the
 * tenant came from (?account=<id>, as the other pages take it). WeChat allows one message per tap on
 * 允许, so each `accept` answer of wx.requestSubscribeMessage is reported on its own
 * (POST /tenant/accounts/{id}/subscriptions, counted per account and template by the cloud's notice
 * sender); rejects, bans and filtered templates are not reported — the cloud sends nothing without a
 * consent.
 */
const api = require('../../utils/api')
const config = require('../../config')
const { getLang, setLang, strings, t } = require('../../utils/i18n')

Component({
  data: { s: {}, lang: 'zh', accountId: 0, busy: false, result: '', error: '' },
  methods: {
    onLoad(options) {
      this.setData({ s: strings(), lang: getLang(), accountId: Number((options && options.account) || 0) })
    },
    setLanguage(e) {
      setLang(e.currentTarget.dataset.lang)
      this.setData({ s: strings(), lang: getLang() })
    },
    subscribe() {
      const ids = Object.values(config.subscribeTemplates).filter(Boolean)
      if (!ids.length || !this.data.accountId) {
        this.setData({ result: t('subscribeNone') })
        return Promise.resolve()
      }
      this.setData({ busy: true, error: '' })
      return new Promise((resolve) => {
        wx.requestSubscribeMessage({
          tmplIds: ids,
          success: (res) => resolve(this.report(ids, res)),
          fail: (err) => {
            this.setData({ busy: false, error: (err && err.errMsg) || '' })
            resolve()
          }
        })
      })
    },
    async report(ids, answers) {
      const accepted = ids.filter((id) => answers[id] === 'accept')
      let done = 0
      try {
        for (const id of accepted) {
          await api.subscribe(this.data.accountId, id)
          done += 1
        }
      } catch (err) {
        this.setData({ error: err.message })
      }
      this.setData({ busy: false, result: done ? t('subscribed', { n: done }) : t('subscribeNone') })
    }
  }
})
