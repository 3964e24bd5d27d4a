# Serving image: the worker only (no torch). GPU inference through onnxruntime-gpu.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY consumer ./consumer
COPY models/__init__.py ./models/__init__.py
COPY exporters/__init__.py ./exporters/__init__.py
RUN pip install --no-cache-dir ".[gpu]" && pip uninstall -y onnxruntime && pip install --no-cache-dir --force-reinstall --no-deps "onnxruntime-gpu>=1.18,<2"
USER 1000
ENTRYPOINT ["memeguard"]
CMD ["worker"]
