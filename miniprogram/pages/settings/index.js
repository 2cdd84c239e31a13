/**
 * Settings: the language (zh-CN / English), and consent to subscribe messages — wx.requestSubscribeMessage
 * for the configured templates, each answer (accept / reject / ban) reported to the cloud
 * (POST /tenant/subscriptions), which sends a template only to payers who accepted it.
 */
const api = require('../../utils/api')
const config = require('../../config')
const { getLang, setLang, strings, t } = require('../../utils/i18n')

const ANSWERS = ['accept', 'reject', 'ban', 'filter']

Component({
  data: { s: {}, lang: 'zh', busy: false, result: '', error: '' },
  methods: {
    onLoad() {
      this.setData({ s: strings(), lang: getLang() })
    },
    setLanguage(e) {
      setLang(e.currentTarget.dataset.lang)
      this.setData({ s: strings(), lang: getLang() })
    },
    subscribe() {
      const ids = Object.values(config.subscribeTemplates).filter(Boolean)
      if (!ids.length) {
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
      const results = ids
        .filter((id) => ANSWERS.includes(answers[id]))
        .map((id) => ({ template_id: id, status: answers[id] }))
      const accepted = results.filter((r) => r.status === 'accept').length
      try {
        await api.subscriptions(results)
        this.setData({ result: accepted ? t('subscribed', { n: accepted }) : t('subscribeNone') })
      } catch (err) {
        this.setData({ error: err.message })
      } finally {
        this.setData({ busy: false })
      }
    }
  }
})
