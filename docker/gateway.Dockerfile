# The gateway (`python -m server`) with its engine on CPU: the `local` backend, or the front of
# Triton with IVIDEOGPT_BACKEND=triton. Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t ivideogpt-gateway .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU torch first, from PyTorch's CPU index: the PyPI wheel of the same version pulls in
# gigabytes of CUDA libraries that a CPU gateway never uses. `pip install .` then keeps it
# (2.13.0+cpu satisfies the pin torch==2.13.0).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY ivideogpt ./ivideogpt
COPY ivideogpt_triton ./ivideogpt_triton
COPY server ./server
COPY training ./training
# the SDK's package ships with the gateway: its servicer uses the SDK's generated gRPC code
COPY clients/python/ivideogpt_client ./clients/python/ivideogpt_client
RUN pip install .

# What the gateway reads at run time, relative to /app: the exported default model (its
# default IVIDEOGPT_MODEL_REPOSITORY) and the held-out frames behind the sample-context route
# (server/samples.py). `python -m server` run from /app imports these same sources, so those
# paths resolve here.
COPY model_repository ./model_repository
COPY data/heldout ./data/heldout

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin ivideogpt
USER ivideogpt

EXPOSE 8000 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000", "--grpc-port", "50051"]
