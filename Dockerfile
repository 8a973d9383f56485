# The inventory as a container image: `inventory` is the entrypoint, so the container's
# arguments are the command (`docker run IMAGE collect --config ...`); without any it prints
# the help. deploy/kubernetes/ runs it nightly.
#
# The install steps are scripts/install-wheel.sh, the same script tests/test_install.py runs:
# it builds the wheel, installs it with the hash-pinned runtime dependencies
# (requirements/runtime.txt) into a fresh virtual environment, and tries it (query --list, the
# demo against the bundled simulator on 127.0.0.1, a named query) before the image exists.
# The final stage holds that virtual environment only: no compiler, no checkout, no secret.
#
#   docker build -t lightsail-inventory .
#   docker run --rm lightsail-inventory demo --db /data/demo.duckdb --parquet-dir /data/lake

# One Python for both stages: the virtual environment refers to it by its path.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# What the script reads: the package, its named queries, the pinned requirements.
COPY pyproject.toml README.md ./
COPY requirements/ requirements/
COPY inventory/ inventory/
COPY sql/ sql/
COPY scripts/install-wheel.sh scripts/
RUN scripts/install-wheel.sh /opt/inventory

FROM ${PYTHON_IMAGE}
# A fixed non-root user (Kubernetes manifests name the same UID in runAsUser); /data is its
# working folder (mount a volume there, or an emptyDir under readOnlyRootFilesystem).
RUN groupadd --system --gid 10001 inventory \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/inventory \
        --create-home --shell /usr/sbin/nologin inventory \
    && install -d -o 10001 -g 10001 -m 0700 /data
COPY --from=build /opt/inventory /opt/inventory
ENV PATH=/opt/inventory/bin:${PATH} \
    HOME=/home/inventory \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /data
USER 10001:10001
ENTRYPOINT ["inventory"]
CMD ["--help"]
