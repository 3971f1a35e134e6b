# GPU image: the workbench with its `gpu` extra (vLLM). Build and run lines: README, "Running on a GPU".
# The devel image carries nvcc and headers: Triton and vLLM compile small kernels at run time.
# PyTorch and vLLM wheels bring their own CUDA runtime; the host needs an NVIDIA driver for CUDA 12.8.
FROM nvidia/cuda:12.8.1-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install --upgrade pip

WORKDIR /opt/dispo-wb
# Dependencies in their own layer (an empty package stands in for the code), so editing the
# workbench does not reinstall torch and vLLM.
COPY pyproject.toml README.md ./
RUN mkdir workbench && touch workbench/__init__.py \
    && pip install ".[gpu,hub]" \
    && pip uninstall -y dispo-wb && rm -rf workbench build *.egg-info
COPY workbench ./workbench
COPY studies ./studies
COPY benchmarks ./benchmarks
RUN pip install --no-deps .

# Runs, studies and caches live on volumes: the MLflow store, the Hugging Face cache (models
# and benchmark sets, downloaded once), and the working directory (SFT cache, checkpoints,
# Optuna journals, reports).
ENV MLFLOW_TRACKING_URI=sqlite:////data/mlflow/mlflow.db \
    HF_HOME=/data/hf
VOLUME ["/data/mlflow", "/data/hf"]
WORKDIR /runs
ENTRYPOINT ["dispo-wb"]
CMD ["--help"]
