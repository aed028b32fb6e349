# Triton Inference Server 2.51 (NGC release 24.10) serving our model repository: the stateful
# Python-backend model `ivideogpt_rollout` (it imports `ivideogpt` and runs the exported
# TorchScript folders beside it). Build from the repository root:
#   docker build -f docker/triton.Dockerfile -t ivideogpt-triton .

FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The Python backend's stub in this image runs the image's Python 3.10, so our packages go
# into that interpreter: the library (ivideogpt/) and the model (ivideogpt_triton/) need only
# torch, numpy and safetensors and run on 3.10 (tests/test_docker_compose.py checks their syntax);
# the gateway (server/, Python 3.11) is not part of this image, hence --no-deps
# --ignore-requires-python. torch comes from PyPI: the CUDA build.
RUN pip install torch==2.13.0 numpy==1.26.4 safetensors==0.8.0

COPY pyproject.toml README.md /tmp/ivideogpt-src/
COPY ivideogpt /tmp/ivideogpt-src/ivideogpt
COPY ivideogpt_triton /tmp/ivideogpt-src/ivideogpt_triton
RUN pip install --no-deps --ignore-requires-python /tmp/ivideogpt-src && rm -rf /tmp/ivideogpt-src

# the committed export of models/default (tests/test_export.py keeps it current)
COPY model_repository /models

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]
# Only the rollout model: the TorchScript folders are its parts (it loads them itself), and
# Triton's own libtorch may be older than the torch that exported them.
CMD ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=ivideogpt_rollout", \
     "--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"]
