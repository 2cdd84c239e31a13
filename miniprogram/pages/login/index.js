/** Log in: wx.login's code → POST /tenant/login (app: miniprogram) → home, or bind when nothing is bound. */
const api = require('../../utils/api')
const { strings } = require('../../utils/i18n')

Component({
  data: { s: {}, busy: false, error: '' },
  methods: {
    onLoad() {
      this.setData({ s: strings() })
    },
    async login() {
      this.setData({ busy: true, error: '' })
      try {
        const bound = await api.login()
        if (bound > 0) wx.reLaunch({ url: '/pages/home/index' })
        else wx.redirectTo({ url: '/pages/bind/index' })
      } catch (err) {
        this.setData({ error: err.message })
      } finally {
        this.setData({ busy: false })
      }
    }
  }
})
