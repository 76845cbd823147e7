# Two images from one file (docker compose builds both):
#   --target gateway  the HTTP gateway: no torch, no media libraries (small, CPU only)
#   --target worker   a training worker: CUDA, torch, diffusers, PyAV (one per GPU)
# PyAV bundles FFmpeg's libraries, so neither image needs a system ffmpeg.

FROM python:3.11-slim AS gateway
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ltx2trainer ./ltx2trainer
RUN pip install --no-cache-dir .
ENV LTX2T_DATA_DIR=/data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"
CMD ["ltx2trainer", "serve", "--host", "0.0.0.0", "--port", "8000"]

FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS worker
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip libsndfile1 \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY pyproject.toml README.md ./
COPY ltx2trainer ./ltx2trainer
RUN pip install --no-cache-dir ".[worker,gpu]"
ENV LTX2T_DATA_DIR=/data
CMD ["ltx2trainer", "worker"]
