# The ltx2trainer package and CLI. Today it prepares datasets (`ltx2trainer prepare`); the gateway and
# GPU-worker images arrive with the service. PyAV bundles FFmpeg's libraries, so no system ffmpeg is needed.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ltx2trainer ./ltx2trainer
RUN pip install --no-cache-dir .
ENV LTX2T_DATA_DIR=/data
ENTRYPOINT ["ltx2trainer"]
CMD ["--help"]
