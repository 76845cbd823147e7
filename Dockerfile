# The ltx2trainer package and CLI on the CPU (prepare, train and sample with the tiny preset or real
# weights mounted at a path). The gateway and GPU-worker images arrive with the service. PyAV bundles
# FFmpeg's libraries, so no system ffmpeg is needed.
FROM python:3.11-slim
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY pyproject.toml README.md ./
COPY ltx2trainer ./ltx2trainer
RUN pip install --no-cache-dir .
ENV LTX2T_DATA_DIR=/data
ENTRYPOINT ["ltx2trainer"]
CMD ["--help"]
