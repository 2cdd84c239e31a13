"""Simulators of the outside services Meterflow talks to, shipped like :mod:`firmware_sim` is for meters.

- :mod:`vendor_sim.wechatpay`: a WeChat Pay API v3 server (its own RSA platform key and certificate or
  public-key mode, merchant signatures verified, responses and notifications signed, resources
  encrypted with AEAD_AES_256_GCM under the merchant's API v3 key, notifications retried, duplicated,
  reordered or dropped on request, refunds, trade bills; direct and partner modes).
- :mod:`vendor_sim.wechat`: the WeChat API server parts the cloud uses (mini-program login
  ``jscode2session``, official-account web login, access tokens).

Production code never imports this package: the cloud reaches a simulator only through the base URLs
and keys in its settings, exactly as it reaches WeChat (tests and ``meterflow demo`` configure those).
"""
