"""The learning loop: moderator reviews -> labelled dataset -> calibrated bundle -> shadow -> promotion.

Serving-side only (ONNX Runtime, confluent-kafka): nothing here imports torch or `models/`. See docs/learning.md.
"""
