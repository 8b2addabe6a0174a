# GPU image: docker build -t slowfast-features . && docker run --gpus all -v /data:/data slowfast-features \
#   python -m pipeline.extract model=slowfast_r50 data=epic data.root=/data/EPIC hardware=gpu
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY conf ./conf
COPY scripts ./scripts
RUN pip3 install torch==2.13.0 && pip3 install -e '.[plot]'
ENTRYPOINT []
CMD ["python3", "-m", "pipeline.extract", "--help"]
