# GPU image: docker build -t slowfast-features . && docker run --gpus all -v /data:/data \
#   -v "$PWD/outputs:/work/outputs" slowfast-features \
#   python3 -m pipeline.extract model=slowfast_r50 data=epic data.root=/data/EPIC hardware=gpu
# The package is installed (not editable; the configs ship inside it) and runs in /work: outputs, demo
# videos and Hydra's logs go to /work/outputs. Weights: python3 -m pipeline.weights slowfast_r50
# (cache: $SLOWFAST_WEIGHTS, default ~/.cache/slowfast_features; mount it to keep them).
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY conf ./conf
COPY scripts ./scripts
RUN pip3 install torch==2.13.0 && pip3 install '.[plot]'
WORKDIR /work
ENTRYPOINT []
CMD ["python3", "-m", "pipeline.extract", "--help"]
