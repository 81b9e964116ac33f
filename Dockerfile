# syntax=docker/dockerfile:1
# neuron-contig: one image, three entry points on PATH:
#   neuron-device-plugin       (DaemonSet; the manifest runs it as root with every capability dropped)
#   neuron-scheduler-extender  (Deployment; the image's default user, 65532, non-root)
#   kubectl-neuron             (the operator view, also installable with pip)
# No HEALTHCHECK: Kubernetes probes (/healthz, /readyz) decide liveness, not the container runtime.
# Build for EKS (amd64 + arm64): see the README, "Build and push the image".
# The base is pinned by version; release builds pin it by digest too:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-trixie@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/neuron-contig
ENV PATH=/opt/neuron-contig/bin:$PATH
# Dependencies first, in their own layer: they change far less often than the code.
COPY deploy/image/requirements.txt /tmp/requirements.txt
RUN pip install --no-cache-dir --no-deps -r /tmp/requirements.txt \
 && pip install --no-cache-dir "setuptools==80.9.0" "wheel==0.45.1"
COPY pyproject.toml README.md /src/
COPY neuronalloc /src/neuronalloc
COPY neuroncli /src/neuroncli
COPY neuronlog /src/neuronlog
COPY plugin /src/plugin
COPY extender /src/extender
COPY kubectl_neuron /src/kubectl_neuron
# --no-deps: every dependency is already pinned above; --no-build-isolation: build with the pinned
# setuptools instead of whatever is newest. Then drop the build tools from the runtime tree, and
# precompile: the pods run on a read-only root filesystem, where Python cannot write __pycache__.
RUN pip install --no-cache-dir --no-deps --no-build-isolation /src \
 && pip uninstall --yes setuptools wheel pip \
 && python -m compileall -q /opt/neuron-contig

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="neuron-contig" \
      org.opencontainers.image.description="Contiguous AWS Neuron device allocation for Kubernetes: device plugin and scheduler extender" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/neuron-contig /opt/neuron-contig
ENV PATH=/opt/neuron-contig/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Non-root by default (the extender); the plugin's DaemonSet overrides the user, see deploy/plugin/.
USER 65532:65532
CMD ["neuron-scheduler-extender"]
