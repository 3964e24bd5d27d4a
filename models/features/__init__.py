"""Training side of the enrichment features: the feature-text classifier and a YOLOv8 ONNX exporter.

Reads enrichment rows written by `python -m consumer.enrich.extract` (schemas only, never `consumer`).
"""
