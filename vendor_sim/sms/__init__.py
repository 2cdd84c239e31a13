"""Simulated SMS vendors: Aliyun (:mod:`.aliyun`) and Tencent Cloud (:mod:`.tencent`) over one
in-memory platform (:mod:`.state`), each checking the official SDK's real request signature."""
