# syntax=docker/dockerfile:1
# Serving images: the worker only (no torch, no training code). Two targets:
#   docker build -t memeguard-worker:latest .             # gpu (the default, last stage): onnxruntime-gpu with
#                                                          # NVIDIA's CUDA 13 / cuDNN 9 / TensorRT 10 wheels
#   docker build --target cpu -t memeguard-worker:cpu .   # CPU only
# onnxruntime and onnxruntime-gpu are never installed together: both provide the `onnxruntime` module and the
# one installed last silently wins. The GPU stage installs the project's dependencies without onnxruntime
# and checks that it is absent. The host needs only the NVIDIA driver and the container toolkit.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
# Every dependency from uv.lock (--frozen: never re-resolved in the build), into /opt/memeguard.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PROJECT_ENVIRONMENT=/opt/memeguard \
    PATH=/opt/memeguard/bin:$PATH
WORKDIR /app
RUN pip install uv==0.13.8
COPY pyproject.toml uv.lock README.md ./
COPY schemas ./schemas
COPY consumer ./consumer
COPY scoring ./scoring
COPY models/__init__.py ./models/__init__.py
COPY exporters/__init__.py ./exporters/__init__.py

FROM base AS cpu
# The serving extras only: no train, enrich or dev packages (no torch, no test tools, no dev broker).
RUN uv sync --frozen --no-editable --extra cpu --extra review && rm -rf /root/.cache \
 && python -c 'import onnxruntime as o; assert "CUDAExecutionProvider" not in o.get_available_providers()'
USER 1000
ENTRYPOINT ["memeguard"]
CMD ["worker"]

FROM base AS gpu
# [cuda,cudnn] (in uv.lock): the CUDA 13 runtime, cuBLAS, cuFFT, cuRAND, NVRTC and cuDNN as wheels (no CUDA base
# image needed). uv.lock declares the cpu and gpu extras conflicting, so onnxruntime never sits beside
# onnxruntime-gpu. TensorRT is outside the lock: PyPI's tensorrt-cu13-libs is a stub that downloads from NVIDIA's
# index at build time. Its major must be the one ONNX Runtime's TensorRT EP was built against (libnvinfer.so.10):
# check ONNX Runtime's release notes when bumping either.
ARG TENSORRT_LIBS="tensorrt-cu13-libs>=10.13,<11"
RUN uv sync --frozen --no-editable --extra gpu --extra review \
 && uv pip install --python /opt/memeguard/bin/python --extra-index-url https://pypi.nvidia.com "${TENSORRT_LIBS}" \
 && rm -rf /root/.cache \
 && python -c 'import importlib.metadata as m, re; names = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower() for d in m.distributions()}; assert "onnxruntime" not in names, "CPU onnxruntime next to onnxruntime-gpu"; assert "onnxruntime-gpu" in names'
# The TensorRT EP and the CUDA EP dlopen these; the wheels put them under site-packages, off the default path.
ENV SITE=/opt/memeguard/lib/python3.11/site-packages
ENV LD_LIBRARY_PATH=${SITE}/tensorrt_libs:${SITE}/nvidia/cu13/lib:${SITE}/nvidia/cudnn/lib
# The NVIDIA container toolkit mounts the driver only for the capabilities asked for.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
# TensorRT engines take minutes to build per bundle and GPU: keep them on a writable volume so a restarted
# or recreated container reuses them (mount a named volume there; the bundle itself is mounted read-only).
ENV MEMEGUARD_TRT_ENGINE_CACHE_DIR=/var/cache/memeguard/trt
RUN mkdir -p /var/cache/memeguard/trt && chown -R 1000:1000 /var/cache/memeguard
VOLUME ["/var/cache/memeguard/trt"]
# auto: TensorRT > CUDA > CPU. Set MEMEGUARD_PROVIDERS=tensorrt or cuda to make a missing GPU stack a start-up
# error instead of a fallback to the CPU.
ENV MEMEGUARD_PROVIDERS=auto
USER 1000
ENTRYPOINT ["memeguard"]
CMD ["worker"]
